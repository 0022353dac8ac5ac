"""The executor pool: several executors pull work, and what travels to process executors."""

import asyncio
import concurrent.futures
import os
import socket
import threading
import time

import numpy as np
import pytest

from apps.basics import Nap
from gpuserve.testing.batching_client import held, one_row, stats
from gpuserve.deployment import prepare
from gpuserve.executors import wire
from gpuserve.protocols.json_codec import encode_json
from gpuserve.service import spec_of
from gpuserve.settings import Settings
from serving import serve

LAYOUTS = {
    "two devices": ("--cpu-devices", "2", "--workers", "2"),
    "two instances on one device": ("--instances-per-device", "2"),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_a_free_executor_serves_while_another_is_stuck(tmp_path, layout):
    with serve("gpuserve.testing.batching_app:Batching", *layout, env={"BATCH_APPS_DIR": str(tmp_path)}, log_dir=tmp_path) as server:
        assert server.get("readyz").body["replicas"] == 2
        with held(server, tmp_path) as gate:
            served = []
            for i in range(5):
                start = time.monotonic()
                reply = one_row(server, "work", f"free-{i}", timeout=10)
                assert reply.status == 200 and time.monotonic() - start < 2
                served.append((reply.body["worker"], reply.body["instance"]))
            gate.open()
            stuck = gate.replies()[0].body
        assert len(set(served)) == 1  # every request went to the one free executor
        assert (stuck["worker"], stuck["instance"]) not in served


def test_executors_share_the_load_and_never_run_two_batches_at_once(tmp_path):
    args = ("--cpu-devices", "2", "--workers", "2")
    with serve("gpuserve.testing.batching_app:Batching", *args, env={"BATCH_APPS_DIR": str(tmp_path)}, log_dir=tmp_path) as server:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda i: one_row(server, "work", f"load-{i}"), range(160)))
        # `work` raises if its executor is already running a batch.
        assert {r.status for r in replies} == {200}, [r.body for r in replies if r.status != 200][:1]
        assert {r.body["device"] for r in replies} == {"cpu:0", "cpu:1"}
        assert set(stats(server, "work")["exec_time_s"]) == {"cpu:0#0.0", "cpu:1#1.0"}


def test_a_process_executor_never_takes_the_reply_to_a_batch_it_gave_up_on_for_the_next():
    """Shutdown cancels a batch while the child runs it; its reply comes later, and must be dropped."""

    async def scenario():
        [executor] = prepare(spec_of(Nap), Settings(), dict(os.environ)).executors()
        await executor.start()
        try:
            abandoned = asyncio.ensure_future(executor.run("nap", [{"seconds": 0.5}], [encode_json]))
            await asyncio.sleep(0.1)
            abandoned.cancel()
            return await executor.run("nap", [{"seconds": 0.01}], [encode_json])
        finally:
            await executor.stop()

    assert asyncio.run(scenario()).outcomes == [b"0.01"]


# -- the wire to process executors ---------------------------------------------------------


@pytest.fixture
def channel():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def round_trip(channel, message):
    sender, receiver = channel
    # Large messages exceed the socket's buffer: send from another thread.
    thread = threading.Thread(target=wire.send, args=(sender, message))
    thread.start()
    received = wire.recv(receiver)
    thread.join()
    return received


def test_wire_round_trips_arrays_out_of_band_and_they_arrive_writable(channel):
    big = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
    message = ("predict", [{"x": big, "y": big.T, "z": np.zeros(0), "label": "a"}, {"x": 3}])
    api, items = round_trip(channel, message)
    assert api == "predict" and items[1] == {"x": 3} and items[0]["label"] == "a"
    np.testing.assert_array_equal(items[0]["x"], big)
    np.testing.assert_array_equal(items[0]["y"], big.T)
    assert items[0]["z"].shape == (0,)
    items[0]["x"][0, 0] = -1  # writable, like the array that was sent
    assert big[0, 0] == 0


def test_wire_sends_array_data_apart_from_the_pickle():
    array = np.ones(100_000, dtype=np.float64)
    head, *buffers = wire.pack({"x": array})
    assert len(head) < 1000  # length, sizes and the pickle stream only
    assert [bytes(b) for b in buffers] == [array.tobytes()]


def test_wire_keeps_messages_apart_on_one_channel(channel):
    for message in ([1, 2, 3], {"x": np.arange(5)}, None, ("ready", 42, "GPU-1")):
        received = round_trip(channel, message)
        if isinstance(message, dict):
            np.testing.assert_array_equal(received["x"], message["x"])
        else:
            assert received == message


def test_the_servers_reader_rebuilds_messages_from_any_split_of_the_stream():
    messages = [("predict", [{"x": [1.5, 2]}]), {"x": np.arange(7)}, None, b"bytes"]
    stream = b"".join(bytes(part) for m in messages for part in wire.pack(m))
    for piece in (1, 7, len(stream)):
        reader = wire.FrameReader()
        received = [m for i in range(0, len(stream), piece) for m in reader.feed(stream[i:i + piece])]
        assert received[0] == messages[0] and received[2:] == messages[2:]
        np.testing.assert_array_equal(received[1]["x"], messages[1]["x"])


def test_wire_reports_a_closed_peer_as_end_of_file(channel):
    sender, receiver = channel
    sender.close()
    with pytest.raises(EOFError):
        wire.recv(receiver)
