"""What CUDA will make of the user's environment, said once per process.

`devices`, `plan` and `serve` all discover the inventory; each passes it here,
so a user reads a warning once, whichever command ran and however often it
looked (`devices --watch` discovers every refresh).
"""

from __future__ import annotations

import logging

from gpuserve.devices.inventory import Inventory

log = logging.getLogger("gpuserve")
_said: set[str] = set()


def warn_once(inventory: Inventory) -> None:
    """Log the inventory's warnings (a cut-short `CUDA_VISIBLE_DEVICES`), each once per process."""
    for message in (inventory.cut_short,):
        if message is not None and message not in _said:
            _said.add(message)
            log.warning(message)
