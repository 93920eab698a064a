"""Packing codes into bytes (stochastic_vq_core.codes): a bit-exact round trip, the
stream's layout, and the checks of every argument."""

import math

import pytest
import torch

from stochastic_vq import pack_codes, packed_size, unpack_codes


def reference_pack(codes: torch.Tensor, bits: int) -> bytes:
    """The stream written out by hand: each value's bits, most significant first, in
    row-major order, zero-padded to a whole byte."""
    text = "".join(format(int(value), f"0{bits}b") for value in codes.reshape(-1))
    text += "0" * (-len(text) % 8)
    return bytes(int(text[i:i + 8], 2) for i in range(0, len(text), 8))


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("shape", [(1,), (7, 3), (5, 1), (3, 2, 5), (0, 4)])
def test_round_trip_is_bit_exact(bits, shape):
    codes = torch.randint(0, 2**bits, shape)
    codes.view(-1)[:1] = 2**bits - 1  # the largest value, where there is one
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (math.ceil(codes.numel() * bits / 8),) == (packed_size(codes.numel(),
                                                                                  bits),)
    assert bytes(packed.tolist()) == reference_pack(codes, bits)
    unpacked = unpack_codes(packed, bits, shape)
    assert unpacked.dtype == torch.int64 and torch.equal(unpacked, codes)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_other_integer_dtypes_pack_alike(dtype):
    codes = torch.randint(0, 32, (9, 3))
    assert torch.equal(pack_codes(codes.to(dtype), 5), pack_codes(codes, 5))


def test_a_quantizers_codes_travel_as_bytes():
    """100 frames of 4 codebooks of 6 bits: 300 bytes, decoded to the same vectors."""
    from residual_vq import RVQ

    vq = RVQ(4, 6, 16)
    codes = vq.encode(torch.randn(100, 16))
    packed = pack_codes(codes, vq.vq_bitrate_per_stage)
    assert packed.numel() == 300 == vq.bitrate(100) / 8
    received = unpack_codes(packed, vq.vq_bitrate_per_stage, codes.shape)
    assert torch.equal(vq.decode(received), vq.decode(codes))


@pytest.mark.parametrize("call, error, match", [
    (lambda: pack_codes(torch.tensor([0, 4]), 2), ValueError, r"codes must be in \[0, 3\]"),
    (lambda: pack_codes(torch.tensor([[1, -1]]), 3), ValueError, "-1 marks"),
    (lambda: pack_codes(torch.zeros(3), 3), TypeError, "codes must be an integer"),
    (lambda: pack_codes([1, 2], 3), TypeError, "codes must be a torch.Tensor"),
    (lambda: pack_codes(torch.zeros(3, dtype=torch.long), 0), ValueError, "bits"),
    (lambda: pack_codes(torch.zeros(3, dtype=torch.long), 17), ValueError, "bits"),
    (lambda: pack_codes(torch.zeros(3, dtype=torch.long), 2.0), TypeError, "bits"),
    (lambda: unpack_codes(torch.zeros(1, dtype=torch.uint8), 3, (4,)), ValueError,
     "packed must hold 2 bytes"),
    (lambda: unpack_codes(torch.zeros(3, dtype=torch.uint8), 3, (4,)), ValueError,
     "packed must hold 2 bytes"),
    (lambda: unpack_codes(torch.zeros(2, dtype=torch.int64), 3, (4,)), TypeError, "packed"),
    (lambda: unpack_codes(torch.zeros(1, 2, dtype=torch.uint8), 3, (4,)), TypeError, "packed"),
    (lambda: unpack_codes(torch.zeros(2, dtype=torch.uint8), 3, "4"), TypeError, "shape"),
    (lambda: unpack_codes(torch.zeros(2, dtype=torch.uint8), 3, (-4,)), ValueError, "shape"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
