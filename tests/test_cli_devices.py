"""`python -m gpuserve devices`, run as a real subprocess on a fake inventory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpuserve.devices import FAKE_GPUS_ENV
from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

GiB = 2**30
GPUS = [
    fake_gpu(0, "NVIDIA H100 80GB HBM3", memory_gib=80, used_gib=1, utilization=12),
    fake_gpu(1, "NVIDIA L4", memory_gib=24, used_gib=0, utilization=0),
    fake_gpu(2, "Tesla T4", memory_gib=16, used_gib=4, utilization=99),
]


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_")}
    env[FAKE_GPUS_ENV] = write_fake_inventory(tmp_path / "gpus.json", GPUS)
    return env


def gpuserve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuserve", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_json_lists_visible_devices_by_cuda_ordinal(fake_env: dict[str, str]) -> None:
    done = gpuserve("devices", "--json", env={**fake_env, "CUDA_VISIBLE_DEVICES": "2,GPU-00000000"})
    assert done.returncode == 0, done.stderr
    devices = json.loads(done.stdout)
    assert [(d["index"], d["uuid"], d["name"]) for d in devices] == [
        (0, GPUS[2]["uuid"], "Tesla T4"),
        (1, GPUS[0]["uuid"], "NVIDIA H100 80GB HBM3"),
    ]
    assert devices[0]["memory_total"] == 16 * GiB and devices[0]["memory_used"] == 4 * GiB
    assert devices[0]["utilization"] == 99 and devices[0]["nvml_index"] == 2


def test_table_shows_ordinal_name_uuid_memory_utilization(fake_env: dict[str, str]) -> None:
    done = gpuserve("devices", env={**fake_env, "CUDA_VISIBLE_DEVICES": "1"})
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split()[:3] == ["CUDA", "NVML", "NAME"] and "UTIL" in header and "TEMP" in header
    assert row.split()[:2] == ["0", "1"]
    assert "NVIDIA L4" in row and GPUS[1]["uuid"] in row and "0 / 24576 MiB" in row and "0%" in row
    assert "H100" not in done.stdout


def test_no_visible_device_says_so_with_the_reason(fake_env: dict[str, str]) -> None:
    done = gpuserve("devices", env={**fake_env, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0
    assert "No GPU visible: CUDA_VISIBLE_DEVICES is empty" in done.stdout
    as_json = gpuserve("devices", "--json", env={**fake_env, "CUDA_VISIBLE_DEVICES": ""})
    assert json.loads(as_json.stdout) == [] and "CUDA_VISIBLE_DEVICES is empty" in as_json.stderr


def test_bad_fake_file_exits_2_naming_the_path(fake_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    done = gpuserve("devices", env={**fake_env, FAKE_GPUS_ENV: str(bad)})
    assert done.returncode == 2
    assert f"{FAKE_GPUS_ENV}={bad}: must hold a JSON list" in done.stderr


def test_watch_refreshes_until_ctrl_c(fake_env: dict[str, str]) -> None:
    # Ctrl-C as a terminal gives it: a run started in the background of a
    # script inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "gpuserve", "devices", "--watch", "0.1"], env=fake_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while seen.count(GPUS[0]["uuid"]) < 2:  # two full redraws, however slow the start
        line = proc.stdout.readline()
        assert line, f"--watch exited early: {proc.stderr.read()}"
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (seen + out).count("\033[H\033[2J") >= 2  # cleared and redrawn more than once


def test_watch_rejects_a_non_positive_interval(fake_env: dict[str, str]) -> None:
    done = gpuserve("devices", "--watch", "0", env=fake_env)
    assert done.returncode == 2 and "'0' is not a positive number of seconds" in done.stderr


def test_a_cut_short_list_is_said_once_naming_the_entry(fake_env: dict[str, str]) -> None:
    done = gpuserve("devices", env={**fake_env, "CUDA_VISIBLE_DEVICES": "0,7,1"})
    assert done.returncode == 0, done.stderr
    assert GPUS[0]["uuid"] in done.stdout and GPUS[1]["uuid"] not in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "cut short" in line]
    assert warnings == ["gpuserve: WARNING: CUDA_VISIBLE_DEVICES='0,7,1' is cut short: CUDA stops at entry '7' "
                        "(no device has ordinal 7 (ordinals are 0..2)) and ignores it and every entry after it, "
                        "so only '0' counts"]


def test_watch_says_a_cut_short_list_once_however_often_it_redraws(fake_env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gpuserve", "devices", "--watch", "0.1"],
                            env={**fake_env, "CUDA_VISIBLE_DEVICES": "1,1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while seen.count(GPUS[1]["uuid"]) < 3:
        line = proc.stdout.readline()
        assert line, f"--watch exited early: {proc.stderr.read()}"
        seen += line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert err.count("cut short") == 1 and f"{GPUS[1]['uuid']} is already listed" in err


def test_mig_devices_one_process_cannot_see_have_no_ordinal_here(tmp_path: Path) -> None:
    mig = [{"uuid": f"MIG-0000000{i}-0000-4000-8000-000000000000", "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            "memory_total": 40 * GiB, "memory_used": 0} for i in range(2)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_")}
    env[FAKE_GPUS_ENV] = write_fake_inventory(tmp_path / "mig.json", [fake_gpu(0, "NVIDIA A100-SXM4-80GB", mig=mig),
                                                                      fake_gpu(1)])
    done = gpuserve("devices", env=env)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[1:4]
    assert [row.split()[0] for row in rows] == ["0", "-", "-"]
    assert mig[0]["uuid"] in rows[0] and mig[1]["uuid"] in rows[1] and fake_gpu(1)["uuid"] in rows[2]
    assert "one CUDA process enumerates one MIG device" in done.stdout and "mig-user-guide" in done.stdout
    as_json = json.loads(gpuserve("devices", "--json", env=env).stdout)
    assert [d["enumerated"] for d in as_json] == [True, False, False]
