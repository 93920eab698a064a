"""Reused CPU buffers for a search's large temporaries.

A tensor of several MB allocated afresh on every call is new memory from the operating
system each time (glibc returns large freed blocks to it), and every one of its pages
faults in when first written, a cost that grows with AVQ's tables (4 MB each at 4 x 8
bits). ``scratch`` hands out a buffer per thread and name
instead, written over by the next call that asks for it, so a temporary that is dead once
its call returns is written into memory that is already mapped.

CPU only, not under ``torch.compile`` (which allocates its graph's tensors itself), and
not for small temporaries, which the allocator serves from memory already mapped at less
cost than a lookup here; elsewhere callers allocate as usual.
"""

from __future__ import annotations

import math
import threading

import torch

MOST_KEPT = 2**22  # entries (16 MB of float32); a larger temporary is allocated afresh
LEAST_KEPT = 2**15  # entries (128 KB of float32, glibc's least threshold for new mappings)

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor | None:
    """An uninitialised tensor of ``shape`` and ``dtype`` for the temporary ``name``, in a
    buffer this thread reuses for every later call with the same name and dtype (the
    previous contents are overwritten: a caller must be done with its tensor before it
    asks again). None where no buffer is kept: off the CPU, under ``torch.compile``, or
    below LEAST_KEPT or above MOST_KEPT entries."""
    size = math.prod(shape)
    if (device.type != "cpu" or not LEAST_KEPT <= size <= MOST_KEPT
            or torch.compiler.is_compiling()):
        return None
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < size:
        with torch.inference_mode(False):  # an ordinary tensor: writable in any mode
            buffer = torch.empty(size, dtype=dtype)
        buffers[(name, dtype)] = buffer
    return buffer_view(buffer, shape)


def buffer_view(buffer: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The first prod(shape) entries of the 1-D ``buffer``, viewed as ``shape`` (or None)."""
    return None if buffer is None else buffer[:math.prod(shape)].view(shape)
