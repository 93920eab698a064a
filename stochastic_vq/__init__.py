"""Additive, product and residual VQ trained by stochastic optimization, and what is built
on them.

    from stochastic_vq import AVQ, PVQ, RVQ, VQVAE, pack_codes, unpack_codes

gives the classes of the top-level modules ``additive_vq``, ``product_vq``,
``residual_vq`` and ``vq_vae``, and the packing of codes into bytes
(``stochastic_vq_core.codes``). This package is the upper storey of the library's layers
(entry points -> this package -> the quantizers and ``vq_vae`` -> ``stochastic_vq_core``),
one idea per module:

- ``methods``: the three methods by name, and the quantizer factory;
- ``loop``: the training loop of the ``train_*.py`` scripts, with ``config``, ``data``,
  ``runfiles`` (logs and checkpoints) and ``cli`` beside it;
- ``reproduce``: the paper's experiments, with ``mse_experiment``, ``ann_experiment``,
  ``image_experiment``, ``images``, ``ann``, ``figures`` and ``points`` beside it.
"""

from additive_vq import AVQ
from product_vq import PVQ
from residual_vq import RVQ
from stochastic_vq_core import __version__
from stochastic_vq_core.codes import pack_codes, packed_size, unpack_codes
from vq_vae import VQVAE

__all__ = ["AVQ", "PVQ", "RVQ", "VQVAE", "__version__", "pack_codes", "packed_size",
           "unpack_codes"]
