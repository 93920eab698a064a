"""The shared core under the three quantizers: one home for each rule they follow.

The floor of the library's layers (entry points -> training and experiments ->
quantizers -> this core). Nothing here imports a module above it.

- ``quantizer``: ``VectorQuantizer``, the base class of AVQ, PVQ and RVQ (training-mode
  estimator, usage counting, codebook replacement, input checks, data-dependent
  initialisation, checkpoints), with ``estimators`` (NSVQ, DiVeQ), ``codebook_updates``,
  ``usage``, ``distributed``, ``kmeans`` (nearest-row search, k-means), ``row_sums``,
  ``stages`` (the first n codebooks, quantizer dropout) and ``scratch`` (reused CPU
  buffers for a search's large temporaries) beside it;
- ``codes``: codes packed into bytes and back;
- ``rules``: the checks of user values, each written once;
- ``paper``: the paper's settings (methods, stages, bitrates, beam widths);
- ``complexity``: the paper's complexity model (WMOPS).

``rules``, ``paper`` and ``complexity`` import no torch.
"""

__version__ = "2.1.0"
