"""Device UUIDs: one spelling out, one comparison in, whatever the source spells."""

import pytest

from gpuserve.plugin import format_uuid, same_device, uuid_key

RAW = bytes(range(16))
SPELLED = "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"


def test_raw_bytes_are_spelled_as_nvml_does():
    assert format_uuid(RAW) == SPELLED
    assert format_uuid(RAW, prefix="MIG-") == "MIG-" + SPELLED[4:]


def test_a_uuid_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="16 bytes, got 3"):
        format_uuid(b"abc")


@pytest.mark.parametrize("other", [SPELLED.upper(), "MIG-" + SPELLED[4:], SPELLED[4:], "gpu-" + SPELLED[4:]])
def test_spellings_of_one_device_compare_equal(other):
    assert same_device(SPELLED, other)
    assert uuid_key(other) == "00010203-0405-0607-0809-0a0b0c0d0e0f"


def test_different_devices_differ():
    assert not same_device(SPELLED, "GPU-00010203-0405-0607-0809-0a0b0c0d0e10")
    assert not same_device(SPELLED, "")
