"""The paper's settings: its three methods, the example scripts' shapes and the figures'
bitrates and beam widths (no torch needed).

Methods are named by lowercase keys (``"avq"``, ``"rvq"``, ``"pvq"``, in the order of the
published figures); ``label`` gives the uppercase name that the figures' files use. The
methods a user can build by name are those of ``stochastic_vq.methods.QUANTIZERS``.
"""

from __future__ import annotations

from stochastic_vq_core.rules import check_int, invalid

METHODS = ("avq", "rvq", "pvq")
# (stages, bits per stage) and AVQ beam width of the original's example scripts
SCRIPT_SHAPES = {"avq": (3, 5), "rvq": (4, 7), "pvq": (4, 7)}
SCRIPT_BEAM_WIDTH = 8
# the figures: M = 4 codebooks at every total bitrate of 12 ... 40 bits
PAPER_STAGES = 4
PAPER_BITRATES = tuple(range(12, 41, 4))
# AVQ beam width of the figures is min(K, largest): 16 for Fig 4 (and the toy data of
# Figs 2 and 3), 64 for Fig 6b
FIG4_LARGEST_BEAM = 16
FIG6B_LARGEST_BEAM = 64


def label(method: str) -> str:
    """The name of ``method`` in the published files and plots, e.g. ``"AVQ"``."""
    return method.upper()


def beam_width_for(bits_per_stage: int, largest: int = FIG4_LARGEST_BEAM) -> int:
    """AVQ beam width of the paper's figures: ``min(K, largest)`` with K = 2**bits."""
    return min(2**bits_per_stage, largest)


def bits_per_stage(total_bits: int, argument: str = "bits") -> int:
    """Bits per codebook of a figure's point: ``total_bits`` over PAPER_STAGES codebooks.

    ``total_bits`` must be a positive multiple of PAPER_STAGES.
    """
    check_int(argument, total_bits, PAPER_STAGES)
    if total_bits % PAPER_STAGES:
        raise invalid(ValueError, argument, f"must be a multiple of {PAPER_STAGES} (the "
                                            f"figures' codebooks), got {total_bits}")
    return total_bits // PAPER_STAGES
