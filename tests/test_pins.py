"""The pins of an image: what a service needs, walked through installed metadata."""

from __future__ import annotations

from pathlib import Path

from gpuserve.cli.pins import pin
from installed import install_metadata, site  # noqa: F401 (a fixture)


def test_everything_required_is_pinned_as_installed_and_the_rest_named(site: Path):
    wheel = site / "service_backend-2.0-py3-none-any.whl"
    install_metadata(site, "service-backend", ["framework>=1", "Helper[fast]", 'winonly; sys_platform == "win32"'],
                     {"url": wheel.as_uri(), "archive_info": {}}, version="2.0")
    install_metadata(site, "framework", ["helper"], version="1.4+cpu")
    install_metadata(site, "helper", ['speedup>=3; extra == "fast"', "missing-dep>=0.5"], version="0.9")
    install_metadata(site, "speedup", [], version="3.1")
    pins = pin([("service-backend", ())])
    assert pins.lines == ("framework==1.4+cpu", "helper[fast]==0.9", "service-backend==2.0", "speedup==3.1")
    assert pins.unpinned == ("missing-dep>=0.5",)  # not installed here: resolved when the image is built
    assert [(name, source.path) for name, _, source in pins.local] == [("service-backend", wheel)]

def test_a_replaced_framework_is_left_to_its_own_line_and_its_needs_still_pinned(site: Path):
    install_metadata(site, "service-backend", ["framework"])
    install_metadata(site, "framework", ["helper"], version="1.4+cpu")
    install_metadata(site, "helper", [], version="0.9")
    assert pin([("service-backend", ())], replaced=["Framework"]).lines == ("helper==0.9", "service-backend==1.0")


def test_a_framework_the_backend_leaves_to_an_extra_still_has_its_needs_pinned(site: Path):
    install_metadata(site, "service-backend", ['framework-cpu; extra == "cpu"'])
    install_metadata(site, "framework-cpu", ["helper"], version="2.21.0")
    install_metadata(site, "helper", [], version="0.9")
    pins = pin([("service-backend", ())], replaced=["framework-cpu", "framework-not-installed"])
    assert pins.lines == ("helper==0.9", "service-backend==1.0")
