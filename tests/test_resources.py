"""Resources: the forms users write, and the errors for the ones they should not."""

from __future__ import annotations

import pytest

from gpuserve.errors import DeclarationError
from gpuserve.resources import Resources, format_bytes, parse_bytes

GiB = 2**30
MiB = 2**20


def test_parse_accepts_count_type_and_memory() -> None:
    r = Resources.parse({"gpu": 2, "gpu_type": "nvidia-h100", "gpu_memory": "16GiB"})
    assert r == Resources(gpu=2, gpu_type="nvidia-h100", gpu_memory=16 * GiB)


def test_parse_none_is_cpu_and_an_instance_passes_through() -> None:
    assert Resources.parse(None) == Resources() and Resources().gpu == 0
    r = Resources(gpu=0.5)
    assert Resources.parse(r) is r


def test_fraction_below_one_is_a_share_of_one_gpu() -> None:
    r = Resources.parse({"gpu": 0.25})
    assert r.gpu == 0.25 and r.is_fraction


def test_whole_float_is_a_whole_count() -> None:
    r = Resources.parse({"gpu": 2.0})
    assert r.gpu == 2 and isinstance(r.gpu, int) and not r.is_fraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GiB", 16 * GiB),
        ("512MiB", 512 * MiB),
        ("16GB", 16 * 10**9),
        ("1.5GiB", int(1.5 * GiB)),
        ("2 gib", 2 * GiB),
        (1024, 1024),
    ],
)
def test_gpu_memory_units(text: str | int, expected: int) -> None:
    assert Resources.parse({"gpu": 1, "gpu_memory": text}).gpu_memory == expected


@pytest.mark.parametrize("value", ["16 parsecs", "GiB", 0, -5, True, 1.5, "-1GiB"])
def test_bad_gpu_memory_names_value_and_forms(value: object) -> None:
    with pytest.raises(DeclarationError) as caught:
        Resources.parse({"gpu": 1, "gpu_memory": value})
    assert repr(value) in str(caught.value) or str(value) in str(caught.value)


def test_unknown_key_is_named_with_the_valid_keys() -> None:
    with pytest.raises(DeclarationError, match=r"'gpus'.*valid keys: gpu, gpu_type, gpu_memory, memory$"):
        Resources.parse({"gpus": 1})


def test_host_memory_is_declared_beside_the_gpus_or_without_any() -> None:
    declared = Resources.parse({"gpu": 1, "gpu_type": "nvidia-l4", "memory": "4GiB"})
    assert declared == Resources(gpu=1, gpu_type="nvidia-l4", memory=4 * GiB)
    assert declared.gpu_memory is None  # host memory is not GPU memory
    assert Resources.parse({"memory": 512 * MiB}) == Resources(gpu=0, memory=512 * MiB)  # CPU only
    assert Resources.parse({"gpu": 0, "memory": "1.5GB"}).memory == 1_500_000_000


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("4 gigs", "memory='4 gigs' is not a memory size: write a number with one of the units B, KB"),
        (0, "memory=0 must be more than 0 bytes"),
        ("0GiB", "memory='0GiB' must be more than 0 bytes"),
        (-1, "memory=-1 must be more than 0 bytes"),
        (2.5, "memory=2.5 is not a memory size: write bytes as an int, or a string such as '16GiB'"),
        (True, "memory=True is not a memory size"),
        ("9" * 400 + "GiB", "is too large to be a memory size"),
    ],
)
def test_bad_memory_names_the_value_and_what_is_valid(value: object, says: str) -> None:
    with pytest.raises(DeclarationError) as caught:
        Resources.parse({"memory": value})
    assert says in str(caught.value)


def test_memory_given_to_the_class_directly_is_checked_too() -> None:
    with pytest.raises(DeclarationError, match=r"^memory=-3 must be a positive number of bytes$"):
        Resources(memory=-3)


def test_bool_is_not_a_gpu_count() -> None:
    with pytest.raises(DeclarationError, match=r"gpu=True is not a number"):
        Resources.parse({"gpu": True})


@pytest.mark.parametrize("value", ["1", None, [1]])
def test_non_numeric_gpu_is_rejected(value: object) -> None:
    with pytest.raises(DeclarationError, match=r"is not a number"):
        Resources.parse({"gpu": value})


def test_negative_gpu_is_rejected() -> None:
    with pytest.raises(DeclarationError, match=r"gpu=-1 is invalid.*whole number.*fraction"):
        Resources.parse({"gpu": -1})


def test_fraction_above_one_is_rejected_with_the_whole_numbers_around_it() -> None:
    with pytest.raises(DeclarationError, match=r"gpu=1\.5 .*gpu=1 or gpu=2"):
        Resources.parse({"gpu": 1.5})


def test_unknown_gpu_type_lists_the_valid_types() -> None:
    with pytest.raises(DeclarationError) as caught:
        Resources.parse({"gpu": 1, "gpu_type": "h100-sxm"})
    message = str(caught.value)
    assert "'h100-sxm'" in message
    for valid in ("nvidia-h100", "nvidia-l4", "nvidia-t4", "nvidia-a10g", "nvidia-tesla-<model>"):
        assert valid in message


def test_gpu_type_or_memory_without_gpu_is_rejected() -> None:
    with pytest.raises(DeclarationError, match=r"gpu_type is set but gpu=0"):
        Resources.parse({"gpu_type": "nvidia-l4"})
    with pytest.raises(DeclarationError, match=r"gpu_memory is set but gpu=0"):
        Resources.parse({"gpu_memory": "1GiB"})


@pytest.mark.parametrize(
    ("gpu_type", "device_name"),
    [
        ("nvidia-l4", "NVIDIA L4"),
        ("nvidia-tesla-t4", "Tesla T4"),
        ("nvidia-t4", "Tesla T4"),
        ("nvidia-tesla-a100", "NVIDIA A100-SXM4-80GB"),
        ("nvidia-a100", "NVIDIA A100 80GB PCIe"),
        ("nvidia-a100", "NVIDIA A100-SXM4-40GB MIG 3g.20gb"),
        ("nvidia-a10g", "NVIDIA A10G"),
        ("nvidia-a10", "NVIDIA A10"),
        ("nvidia-h100", "NVIDIA H100 80GB HBM3"),
        ("nvidia-h100", "NVIDIA H100 PCIe"),
        ("nvidia-h200", "NVIDIA H200"),
        ("nvidia-tesla-v100", "Tesla V100-SXM2-16GB"),
        ("nvidia-l40s", "NVIDIA L40S"),
        ("NVIDIA-L4", "NVIDIA L4"),
    ],
)
def test_gpu_type_matches_nvml_names(gpu_type: str, device_name: str) -> None:
    assert Resources.parse({"gpu": 1, "gpu_type": gpu_type}).matches(device_name)


@pytest.mark.parametrize(
    ("gpu_type", "device_name"),
    [
        ("nvidia-a10", "NVIDIA A100-SXM4-80GB"),
        ("nvidia-a10", "NVIDIA A10G"),
        ("nvidia-a10g", "NVIDIA A10"),
        ("nvidia-l4", "NVIDIA L40S"),
        ("nvidia-l40", "NVIDIA L40S"),
        ("nvidia-l40s", "NVIDIA L40"),
        ("nvidia-h100", "NVIDIA H200"),
        ("nvidia-h200", "NVIDIA GH200 480GB"),
        ("nvidia-t4", "NVIDIA L4"),
    ],
)
def test_gpu_type_does_not_match_lookalike_names(gpu_type: str, device_name: str) -> None:
    assert not Resources.parse({"gpu": 1, "gpu_type": gpu_type}).matches(device_name)


def test_no_gpu_type_matches_every_device() -> None:
    assert Resources(gpu=1).matches("anything at all")


def test_bytes_round_trip_for_messages() -> None:
    assert format_bytes(40 * GiB) == "40.0 GiB"
    assert format_bytes(512) == "512 B"
    assert parse_bytes("40.0 GiB") == 40 * GiB
