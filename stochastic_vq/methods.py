"""The methods by name: their classes (the registry a new method joins) and a factory.

The paper's settings (its three methods, shapes, bitrates) are in ``stochastic_vq_core.paper``.
"""

from __future__ import annotations

from additive_vq import AVQ
from product_vq import PVQ
from residual_vq import RVQ
from stochastic_vq_core.paper import SCRIPT_BEAM_WIDTH
from stochastic_vq_core.quantizer import VectorQuantizer
from stochastic_vq_core.rules import check_choice

QUANTIZERS = {"avq": AVQ, "rvq": RVQ, "pvq": PVQ}  # in the order of METHODS


def quantizer_class(method: str) -> type[VectorQuantizer]:
    """The class of ``method``: AVQ, RVQ or PVQ."""
    return QUANTIZERS[check_choice("method", method, tuple(QUANTIZERS))]


def build_quantizer(method: str, stages: int, bits: int, data_dim: int,
                    beam_width: int = SCRIPT_BEAM_WIDTH, **options) -> VectorQuantizer:
    """An untrained AVQ, RVQ or PVQ with ``stages`` codebooks of ``2**bits`` entries.

    ``beam_width`` is used by AVQ only; ``options`` are the classes' keyword arguments
    (``discard_threshold``, ``device``, ``estimator``, ``check_finite``, ...).
    """
    return quantizer_class(method).build(stages, bits, data_dim, beam_width=beam_width,
                                         **options)
