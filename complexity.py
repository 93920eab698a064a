"""Computational complexity of AVQ, RVQ and PVQ encoding, in WMOPS (ITU-T G.191).

The paper's complexity model, counted per quantized vector; see
``stochastic_vq_core.complexity`` for the model and its building blocks. This module is
its name in a checkout; once installed, import ``stochastic_vq_core.complexity`` (an
installed top-level module named ``complexity`` would clash with an unrelated project).

    from complexity import AVQ_Complexity
    AVQ_Complexity(128, 32, 4, beam_width=8).wmops()   # 0.82417
"""

from stochastic_vq_core.complexity import (
    AVQ_Complexity,
    Ops,
    PVQ_Complexity,
    RVQ_Complexity,
    argmin,
    distance,
    mse,
    sort_select,
)

__all__ = ["AVQ_Complexity", "Ops", "PVQ_Complexity", "RVQ_Complexity", "argmin", "distance",
           "mse", "sort_select"]
