"""The batcher and what it answers with; see `batcher.py` for how the pieces fit.

- `queue.py`    pending requests of one API, and the requests in it
- `admission.py` what is learned per (API, executor), and what is admitted
- `dispatch.py`  queued work to free executors, one batch per pool lease
- `settle.py`    each request answered once, and counted
- `rerun.py`     requests run again alone after their batch failed as a whole or lost its replica
- `quarantine.py` inputs that crashed replicas, refused once they crashed two
- `watchdog.py`  calls that run past their API's limit: their replica is replaced
- `refusals.py`  why a request is answered without its result (`Reason`)
- `streams.py`   a streaming API's values on their way to their readers, paced and limited
"""

from gpuserve.batching.batcher import Batcher
from gpuserve.batching.queue import default_queue_size
from gpuserve.batching.refusals import ItemFailed, Reason, Refused
from gpuserve.batching.streams import Stream, StreamLimits

__all__ = ["Batcher", "ItemFailed", "Reason", "Refused", "Stream", "StreamLimits", "default_queue_size"]
