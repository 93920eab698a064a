"""The three methods in one place: their names, the paper's settings and a factory.

Methods are named by lowercase keys (``"avq"``, ``"rvq"``, ``"pvq"``, in the order of the
published figures); ``label`` gives the uppercase name that the figures' files use. This
module imports no torch until a quantizer is built, so that the complexity calculator
stays quick.
"""

from __future__ import annotations

import importlib

METHODS = ("avq", "rvq", "pvq")
TITLES = {"avq": "additive VQ (AVQ)", "rvq": "residual VQ (RVQ)", "pvq": "product VQ (PVQ)"}
_CLASSES = {"avq": ("additive_vq", "AVQ"), "rvq": ("residual_vq", "RVQ"),
            "pvq": ("product_vq", "PVQ")}
# (stages, bits per stage) of the original's example scripts
SCRIPT_SHAPES = {"avq": (3, 5), "rvq": (4, 7), "pvq": (4, 7)}
SCRIPT_BEAM_WIDTH = 8
# the figures: M = 4 codebooks at every total bitrate of 12 ... 40 bits
PAPER_STAGES = 4
PAPER_BITRATES = tuple(range(12, 41, 4))


def label(method: str) -> str:
    """The name of ``method`` in the published files and plots, e.g. ``"AVQ"``."""
    return method.upper()


def check_method(method: str) -> str:
    """``method`` if it is one of METHODS, else a ValueError naming the choices."""
    if method not in _CLASSES:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def beam_width_for(bits_per_stage: int, largest: int) -> int:
    """AVQ beam width of the paper's figures: ``min(K, largest)`` with K = 2**bits."""
    return min(2**bits_per_stage, largest)


def quantizer_class(method: str) -> type:
    """The class of ``method``: AVQ, RVQ or PVQ."""
    module, name = _CLASSES[check_method(method)]
    return getattr(importlib.import_module(module), name)


def build_quantizer(method: str, stages: int, bits: int, data_dim: int,
                    beam_width: int = SCRIPT_BEAM_WIDTH, **options):
    """An untrained AVQ, RVQ or PVQ with ``stages`` codebooks of ``2**bits`` entries.

    ``beam_width`` is used by AVQ only; ``options`` are the classes' keyword arguments
    (``discard_threshold``, ``device``, ``check_finite``, ...).
    """
    cls = quantizer_class(method)
    if method == "avq":
        return cls(stages, bits, data_dim, beam_width, **options)
    return cls(stages, bits, data_dim, **options)
