"""Names derived from a service's, for images and Kubernetes objects."""

from __future__ import annotations

import re

from gpuserve.errors import DeclarationError

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def dns_label(service_name: str) -> str:
    """`Classifier` -> `classifier`, `TextEmbedder_v2` -> `textembedder-v2`: lower case, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", service_name.lower()).strip("-")[:63].rstrip("-") or "service"


def checked_dns_label(name: str) -> str:
    """`name` if Kubernetes accepts it as an object name (a DNS-1123 label), else an error saying what would."""
    if not _LABEL.match(name):
        raise DeclarationError(
            f"name {name!r} is not a Kubernetes name: lower case letters, digits and '-', at most 63, "
            f"starting and ending with a letter or digit (e.g. {dns_label(name)!r})"
        )
    return name
