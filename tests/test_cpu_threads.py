"""Replicas on the CPU get the framework's intra-op threads that fit the cores beside the event loop."""

from __future__ import annotations

import os

import pytest

from serving import serve


@pytest.mark.parametrize("service, flags, expected", [
    ("threads:Threads", (), "derived"),
    ("threads:ThreadsProcess", (), "derived"),
    ("threads:Threads", ("--cpu-threads", "3"), 3),
    ("threads:Threads", ("--cpu-threads", "0"), None),
], ids=["thread-derived", "process-derived", "set", "framework-default"])
def test_replicas_on_the_cpu_get_intra_op_threads_that_fit_the_cores(tmp_path, service, flags, expected):
    cores = len(os.sched_getaffinity(0))
    with serve(service, *flags, log_dir=tmp_path) as server:
        got = server.post("threads", {}).body
    assert got["device"] == "cpu"
    if expected == "derived":
        assert got["context"] == got["torch"] == max(1, cores - 1)
        assert f"use {max(1, cores - 1)} intra-op thread(s) each" in server.log()
    elif expected is None:
        assert got["context"] is None
    else:
        assert got["context"] == got["torch"] == expected
