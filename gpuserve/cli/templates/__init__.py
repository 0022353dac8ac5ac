"""The files `gpuserve build` and `gpuserve k8s` write, as templates (package data beside this module).

`$name` (or `${name}`) is a value filled in; `$$` is a literal `$`.
"""

from __future__ import annotations

from importlib import resources
from string import Template


def render(template: str, /, **values: object) -> str:
    text = resources.files(__name__).joinpath(template).read_text(encoding="utf-8")
    return Template(text).substitute({key: str(value) for key, value in values.items()})
