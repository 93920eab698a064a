"""What the three quantizers share and what is built around them.

The quantizers are the top-level modules ``additive_vq``, ``product_vq`` and
``residual_vq``; this package holds the rest, one idea per module:

- ``nsvq``: the base class of the three (noise substitution, usage counters, codebook
  replacement, input checks, data-dependent initialisation), with ``kmeans`` and
  ``distributed`` beside it;
- ``methods``: the three methods, their paper settings and the quantizer factory;
- ``loop``: the training loop of the ``train_*.py`` scripts, with ``config``, ``data``,
  ``runfiles`` (logs and checkpoints) and ``cli`` beside it;
- ``reproduce``: the paper's experiments, with ``mse_experiment``, ``ann_experiment``,
  ``image_experiment``, ``images``, ``ann`` and ``figures`` beside it.
"""

__version__ = "2.0.0"
