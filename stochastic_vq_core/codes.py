"""Codes as bytes: codeword indices packed into a bit stream, and back.

A quantizer's codes are int64 tensors, 64 bits for an index of b bits. ``pack_codes``
writes each index in ``bits`` bits, most significant bit first, one after another in
row-major order (the last axis fastest), and pads the stream with zero bits to a whole
byte; ``unpack_codes`` reads them back given the shape. ``n`` codes of b bits each for
``V`` vectors take ``ceil(V * n * b / 8)`` bytes (``packed_size``): 100 frames of 4
codebooks of 6 bits, 300 bytes instead of 3,200.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stochastic_vq_core.rules import check_int

MAX_PACKED_BITS = 16  # bits per index at most (K = 65536 entries)


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` indices of ``bits`` bits each take when packed."""
    return -(-check_int("count", count, 0) * _check_bits(bits) // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (...) of integers in [0, 2**bits) -> (packed_size(codes.numel(), bits),) uint8.

    ``bits`` is the bits per index (a quantizer's ``vq_bitrate_per_stage``), 1 ... 16.
    The bytes lie on the codes' device.
    """
    bits = _check_bits(bits)
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1).long()  # (L,)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes must be in [0, {2**bits - 1}] for {bits} bits, got values in "
                         f"[{int(flat.min())}, {int(flat.max())}] (-1 marks a codebook a "
                         "vector did not use: pack the codes of the codebooks it used)")
    shifts = torch.arange(bits - 1, -1, -1, device=flat.device)  # (bits,) most significant first
    stream = ((flat.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)  # (L * bits,)
    stream = torch.nn.functional.pad(stream, (0, -len(stream) % 8))  # whole bytes
    weights = 2 ** torch.arange(7, -1, -1, device=flat.device)  # (8,)
    return (stream.view(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, shape: Sequence[int]) -> torch.Tensor:
    """The codes (shape) int64 that ``pack_codes(codes, bits)`` packed into ``packed``."""
    bits = _check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"packed must be a 1-D uint8 torch.Tensor, got "
                        f"{getattr(packed, 'dtype', type(packed).__name__)} of shape "
                        f"{tuple(getattr(packed, 'shape', ()))}")
    try:
        shape = torch.Size(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if any(size < 0 for size in shape):
        raise ValueError(f"shape must hold sizes >= 0, got {tuple(shape)}")
    count = shape.numel()
    if len(packed) != packed_size(count, bits):
        raise ValueError(f"packed must hold {packed_size(count, bits)} bytes for {count} codes "
                         f"of {bits} bits (shape {tuple(shape)}), got {len(packed)}")
    positions = torch.arange(7, -1, -1, device=packed.device)  # (8,) most significant first
    stream = ((packed.long().unsqueeze(1) >> positions) & 1).reshape(-1)  # (8 * bytes,)
    digits = stream[:count * bits].view(count, bits)  # (L, bits)
    shifts = torch.arange(bits - 1, -1, -1, device=packed.device)  # (bits,)
    return (digits << shifts).sum(dim=1).view(shape)


def _check_bits(bits) -> int:
    return check_int("bits", bits, 1, MAX_PACKED_BITS)
