"""Product vector quantization (PVQ) trained with NSVQ (or DiVeQ).

The D-dimensional vector is split into M contiguous sub-vectors of D/M dimensions;
each is quantized in its own codebook and the results are concatenated.
"""

from __future__ import annotations

import torch

from stochastic_vq_core.kmeans import first_argmin, search_layout
from stochastic_vq_core.quantizer import CPU, VectorQuantizer
from stochastic_vq_core.rules import check_divisible


class PVQ(VectorQuantizer):
    """Product VQ with M codebooks of K = 2**vq_bitrate_per_stage entries of dimension D/M.

    Args:
        num_stages: M, number of sub-vectors (codebooks); must divide ``data_dim``.
        vq_bitrate_per_stage: bits per sub-vector, K = 2**bits entries per codebook.
        data_dim: D, dimension of the vectors to quantize.
        discard_threshold: usage fraction below which ``replace_unused_codebooks``
            replaces a codeword.
        device: where the codebooks live.
        **options: the keyword options of ``VectorQuantizer``: ``check_finite``,
            ``replacement_noise``, ``process_group``, ``estimator`` ("nsvq", the paper's,
            or "diveq"), ``diveq_noise``, ``codebook_update``, ``ema_decay``, ``channel_first``.

    The trainable parameter ``codebooks`` has shape (M, K, D/M).
    """

    title = "product VQ (PVQ)"

    def __init__(self, num_stages: int, vq_bitrate_per_stage: int, data_dim: int,
                 discard_threshold: float = 0.01, device=CPU, **options):
        super().__init__(num_stages, vq_bitrate_per_stage, data_dim, discard_threshold, device,
                         **options)
        check_divisible("data_dim", data_dim, "num_stages", num_stages)
        self.sub_dim = data_dim // num_stages
        self.codebooks = self._uniform_codebooks(
            (num_stages, self.codebook_size, self.sub_dim), device)

    _needs_all_stages = ("its codebooks code different parts of the vector, so a code needs "
                         "all of them")

    def _elements_per_row(self, stages: int) -> int:
        return self.num_stages * self.codebook_size

    def _tables(self, dtype, stages):
        # (M, K, d), the entries in first_argmin's order
        codebooks = search_layout(self.codebooks.detach().to(dtype), 1)
        return codebooks.transpose(1, 2), codebooks.pow(2).sum(-1).unsqueeze(1)  # (M,d,K), (M,1,K)

    def _encode_chunk(self, x, tables, stages):
        codebooks_t, norms = tables
        parts = x.reshape(len(x), self.num_stages, self.sub_dim).transpose(0, 1)  # (M, N, d)
        # ||p - c||² - ||p||² for all subspaces in one batched product, (M, N, K)
        distances = torch.baddbmm(norms, parts, codebooks_t, alpha=-2.0)
        return first_argmin(distances).t()  # (N, M)

    _chained = False

    def _codeword_targets(self, x, codes, quantized):
        """Each codeword's target is its sub-vector, (N, D/M) per stage."""
        return x.reshape(len(x), self.num_stages, self.sub_dim).unbind(dim=1)

    def _init_target(self, x, residual, stage):
        return x[:, stage * self.sub_dim:(stage + 1) * self.sub_dim]

    def _decode(self, codes):
        """The chosen codewords side by side, (N, D), differentiable in ``codebooks``."""
        return self._gather_codewords(codes).flatten(1)

    @torch.no_grad()
    def search_tables(self, queries: torch.Tensor) -> torch.Tensor:
        """Lookup tables (Q, M, K): squared distances ``||q_m - c_mk||²`` per subspace."""
        q = queries.to(self.codebooks.device, torch.float32)  # (Q, D)
        codebooks = self.codebooks.detach()  # (M, K, d)
        parts = q.reshape(len(q), self.num_stages, self.sub_dim)  # (Q, M, d)
        inner = torch.einsum("qmd,mkd->qmk", parts, codebooks)
        return (parts.pow(2).sum(-1, keepdim=True) - 2.0 * inner
                + codebooks.pow(2).sum(-1).unsqueeze(0))

    def table_distances(self, table_sums, queries, decoded_norms):
        """The sums of the per-subspace squared distances are the distances (Q, N)."""
        return table_sums
