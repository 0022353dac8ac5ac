"""The contract every backend keeps, as a pytest class to subclass.

    from gpuserve.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_name = "mybackend"          # its entry-point name

        def make_model(self):               # a small model of your framework
            return MyModel()

        def make_out_of_memory_error(self):  # optional: what your framework raises
            return MyFramework.OutOfMemory()

The backend is loaded through its entry point, as the server loads it. Tests
that need a usable backend skip, with its reason, when `viable()` says no.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from gpuserve.plugin import Backend, BackendEntry, Device, GpuserveError, Viability, installed_backend

GHOST_GPU = Device(index=63, uuid="GPU-00000000-dead-4000-8000-000000000063", name="absent GPU")


class BackendConformance:
    backend_name: ClassVar[str] = ""

    def make_model(self) -> Any:
        """A small model object of the backend's framework."""
        raise NotImplementedError("override make_model() to return a small model of your framework")

    def make_out_of_memory_error(self) -> BaseException | None:
        """The exception your framework raises when a device runs out of memory."""
        return None

    # -- fixtures --------------------------------------------------------------------
    @pytest.fixture
    def entry(self) -> BackendEntry:
        assert self.backend_name, "set backend_name to the backend's entry-point name"
        entry = installed_backend(self.backend_name)
        assert entry.cls is not None, f"backend {self.backend_name!r} failed to load: {entry.error}"
        return entry

    @pytest.fixture
    def backend(self, entry: BackendEntry) -> Backend:
        viability = entry.viability()
        if not viability.ok:
            pytest.skip(f"backend {self.backend_name!r} is not viable here: {viability.reason}")
        assert entry.cls is not None
        return entry.cls()

    # -- registration and viability ----------------------------------------------------
    def test_registered_under_its_entry_point_name(self, entry: BackendEntry) -> None:
        assert entry.cls is not None and issubclass(entry.cls, Backend)
        assert entry.cls.name == self.backend_name
        assert entry.distribution, "the backend should come from an installed distribution"

    def test_viable_answers_with_a_reason_when_not(self, entry: BackendEntry) -> None:
        assert entry.cls is not None
        viability = entry.cls.viable()
        assert isinstance(viability, Viability)
        assert viability.ok or viability.reason.strip(), "a backend that is not viable must say why"

    # -- devices ---------------------------------------------------------------------
    def test_devices_are_numbered_from_zero(self, backend: Backend) -> None:
        devices = backend.devices() if backend.uses_gpus else []
        assert [d.index for d in devices] == list(range(len(devices)))
        assert all(isinstance(d, Device) and d.is_gpu for d in devices)
        assert len({d.uuid for d in devices}) == len(devices)

    def test_visibility_env_hides_every_gpu_not_given(self, backend: Backend) -> None:
        env = backend.visibility_env([])
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        if backend.uses_gpus:
            assert env.get("CUDA_VISIBLE_DEVICES") == "", "an empty device list must hide all GPUs"

    # -- placement -------------------------------------------------------------------
    def test_places_on_the_cpu_device(self, backend: Backend) -> None:
        cpu = Device.cpu(0)
        assert backend.native_device(cpu) is not None
        assert backend.place(self.make_model(), cpu) is not None
        with backend.device_context(cpu):
            pass

    def test_an_absent_gpu_is_an_error_never_a_fallback(self, backend: Backend) -> None:
        model = self.make_model()
        with pytest.raises(GpuserveError, match="GPU|cuda|device"):
            backend.place(model, GHOST_GPU)
        with pytest.raises(GpuserveError, match="GPU|cuda|device"):
            with backend.device_context(GHOST_GPU):
                pass

    def test_out_of_memory_is_recognised(self, backend: Backend) -> None:
        assert backend.is_out_of_memory(ValueError("not memory")) is False
        oom = self.make_out_of_memory_error()
        if oom is not None:
            assert backend.is_out_of_memory(oom) is True
