"""The torch backend on this machine's CPU build, and on real GPUs where present."""

import subprocess
import sys
import textwrap

import pytest
import torch

from gpuserve.plugin import BackendError, CapabilityError, Device
from gpuserve.testing import fake_gpu, write_fake_inventory
from gpuserve_torch import TorchBackend

CPU = Device.cpu(0)
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


def test_cpu_device_is_a_torch_device():
    assert TorchBackend().native_device(CPU) == torch.device("cpu")


def test_place_moves_a_module_to_the_cpu_device():
    model = TorchBackend().place(torch.nn.Linear(3, 2), CPU)
    assert next(model.parameters()).device.type == "cpu"


def test_no_cuda_means_no_devices_here():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    assert TorchBackend().devices() == []


def test_planned_gpu_on_a_cpu_only_torch_is_a_clear_error():
    if torch.backends.cuda.is_built():
        pytest.skip("this torch has CUDA")
    gpu = Device(index=0, uuid="GPU-1", name="NVIDIA H100 80GB HBM3")
    with pytest.raises(BackendError, match="without CUDA|has no CUDA"):
        TorchBackend().limit_visibility([gpu])
    with pytest.raises(BackendError, match="has no CUDA"):
        TorchBackend().place(torch.nn.Linear(2, 2), gpu)


def test_serving_torch_on_simulated_gpus_fails_instead_of_running_on_cpu(tmp_path):
    (tmp_path / "svc.py").write_text(textwrap.dedent("""
        import gpuserve, torch

        @gpuserve.service(resources={"gpu": 1}, backend="torch")
        class Svc:
            @gpuserve.api
            def go(self):
                return 1
    """))
    fake = write_fake_inventory(tmp_path / "gpus.json", [fake_gpu(0)])
    out = subprocess.run(
        [sys.executable, "-m", "gpuserve", "serve", "svc:Svc", "--port", "0"],
        cwd=tmp_path, env={"GPUSERVE_FAKE_GPUS": fake, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "which backend 'torch' cannot run on" in out.stderr and "--backend fake-gpu" in out.stderr
    assert "Running on" not in out.stdout + out.stderr


def test_distribute_over_cpu_devices_is_refused_not_faked():
    with pytest.raises(CapabilityError, match="DataParallel needs GPUs"):
        TorchBackend().distribute(torch.nn.Linear(2, 2), [Device.cpu(0), Device.cpu(1)])


def test_memory_on_the_cpu_is_host_memory():
    info = TorchBackend().memory(CPU)
    assert 0 < info.used < info.total


def test_torch_out_of_memory_and_memory_error_are_out_of_memory():
    backend = TorchBackend()
    assert backend.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert backend.is_out_of_memory(MemoryError())
    assert not backend.is_out_of_memory(RuntimeError("shape mismatch"))


# -- real GPUs ---------------------------------------------------------------------------
def gpu(i):
    return TorchBackend().devices()[i]


@pytest.mark.gpu
def test_gpu_devices_carry_the_drivers_uuids():
    from gpuserve.plugin import discover
    import os

    assert [d.uuid for d in TorchBackend().devices()] == [d.uuid for d in discover(os.environ).devices]


@pytest.mark.gpu
def test_place_and_device_context_use_the_given_gpu():
    backend = TorchBackend()
    last = gpu(torch.cuda.device_count() - 1)
    model = backend.place(torch.nn.Linear(4, 4), last)
    assert next(model.parameters()).device == torch.device("cuda", last.index)
    with backend.device_context(last):
        assert torch.cuda.current_device() == last.index


@pytest.mark.gpu
@needs_two_gpus
def test_distribute_wraps_data_parallel_over_the_workers_gpus():
    backend = TorchBackend()
    model = backend.distribute(torch.nn.Linear(4, 2), [gpu(0), gpu(1)])
    assert isinstance(model, torch.nn.DataParallel) and model.device_ids == [0, 1]
    assert model(torch.ones(8, 4, device="cuda:0")).shape == (8, 2)


@pytest.mark.gpu
def test_out_of_memory_from_a_real_allocation_is_recognised():
    backend = TorchBackend()
    with pytest.raises(Exception) as info:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda:0")
    assert backend.is_out_of_memory(info.value)


@pytest.mark.gpu
def test_memory_reports_the_gpu():
    info = TorchBackend().memory(gpu(0))
    assert 0 <= info.used < info.total == torch.cuda.get_device_properties(0).total_memory


def test_a_torch_service_serves_from_worker_processes(tmp_path):
    """Process isolation end to end: the child builds the model and answers over the wire."""
    import json
    import os
    import socket
    import time
    import urllib.request

    (tmp_path / "svc.py").write_text(textwrap.dedent("""
        import os
        import gpuserve, torch

        @gpuserve.service(backend="torch", workers=2, isolation="process")
        class Doubler:
            def __init__(self):
                self.device = gpuserve.context().device
                self.weight = torch.full((3,), 2.0, device=self.device)

            @gpuserve.api(batchable=True)
            def double(self, x: list[list[float]]) -> list[dict]:
                out = (torch.tensor(x, device=self.device) * self.weight).tolist()
                return [{"y": y, "pid": os.getpid(), "device": str(self.device),
                         "visible": os.environ.get("CUDA_VISIBLE_DEVICES")} for y in out]
    """))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSERVE_", "CUDA_"))}
    proc = subprocess.Popen([sys.executable, "-m", "gpuserve", "serve", "svc:Doubler", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # A batchable API takes rows: one row of three values.
        request = urllib.request.Request(f"{url}/double", data=json.dumps({"x": [[1, 2.5, -3]]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            [answer] = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert answer["y"] == [2.0, 5.0, -6.0]
    assert answer["pid"] != proc.pid and answer["device"] == "cpu"
    assert answer["visible"] == ""  # a CPU plan hides every GPU from the worker


def test_set_cpu_threads_sets_torchs_intra_op_threads():
    before = torch.get_num_threads()
    try:
        TorchBackend().set_cpu_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
