"""Small framework-free services for request-path tests."""

import atexit
import threading
import time

import gpuserve


@gpuserve.service(backend="cpu")
class Basics:
    def __init__(self) -> None:
        self.ctx = gpuserve.context()

    @gpuserve.api
    def echo(self, value, suffix: str = ""):
        return {"value": value, "suffix": suffix, "thread": threading.current_thread().name}

    @gpuserve.api
    def fail(self, kind: str):
        raise ValueError(f"bad kind {kind!r}")

    @gpuserve.api(batchable=True, max_batch_size=16)
    def sizes(self, n: list[int]) -> list[int]:
        time.sleep(0.02)  # long enough for concurrent requests to queue up behind a batch
        return [len(n)] * len(n)

    @gpuserve.api(batchable=True)
    def wrong_length(self, n: list[int]) -> list[int]:
        return [i for i in n if i >= 0]  # a negative row gets no result: one too few for the batch

    @gpuserve.api
    def slow(self, seconds: float):
        time.sleep(seconds)
        return seconds

    @gpuserve.api
    def whoami(self):
        ctx = gpuserve.context()
        return {"worker": ctx.worker_index, "backend": ctx.backend_name,
                "device": str(ctx.device), "planned": [d.uuid for d in ctx.planned]}


@gpuserve.service(backend="cpu")
class SlowStart:
    def __init__(self) -> None:
        time.sleep(3)

    @gpuserve.api
    def ping(self):
        return "pong"


@gpuserve.service(backend="cpu")
class BrokenInit:
    def __init__(self) -> None:
        raise RuntimeError("weights file missing")

    @gpuserve.api
    def ping(self):
        return "pong"


@gpuserve.service(backend="cpu")
class Stuck:
    @gpuserve.api
    def forever(self):
        time.sleep(3600)  # a model call that never returns

    @gpuserve.api
    def ping(self):
        return "pong"


@gpuserve.service(backend="cpu", isolation="process")
class StuckProcess(Stuck):
    pass


@gpuserve.service(backend="cpu", isolation="process")
class Nap:
    @gpuserve.api
    def nap(self, seconds: float):
        time.sleep(seconds)
        return seconds


@gpuserve.service(backend="cpu", isolation="process")
class BrokenInitProcess(BrokenInit):
    pass


@gpuserve.service(backend="cpu")
class HangsAtExit:
    """Its constructor leaves something that never ends when the interpreter exits."""

    def __init__(self) -> None:
        atexit.register(time.sleep, 3600)

    @gpuserve.api
    def ping(self):
        return "pong"
