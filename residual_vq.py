"""Residual vector quantization (RVQ) trained with NSVQ (or DiVeQ).

Each of the M stages quantizes what the previous stages left over: ``r = x``; for each
stage ``i = argmin ||r - C_s[i]||²``, ``r = r - C_s[i]``; the output is the sum of the
chosen codewords.
"""

from __future__ import annotations

import torch

from stochastic_vq_core.kmeans import first_argmin, search_layout
from stochastic_vq_core.quantizer import CPU, VectorQuantizer


class RVQ(VectorQuantizer):
    """Residual VQ with M codebooks of K = 2**vq_bitrate_per_stage entries of dimension D.

    Args:
        num_stages: M, number of codebooks (stages).
        vq_bitrate_per_stage: bits per stage, K = 2**bits entries per codebook.
        data_dim: D, dimension of the vectors to quantize.
        discard_threshold: usage fraction below which ``replace_unused_codebooks``
            replaces a codeword.
        device: where the codebooks live.
        **options: the keyword options of ``VectorQuantizer``: ``check_finite``,
            ``replacement_noise``, ``process_group``, ``estimator`` ("nsvq", the paper's,
            or "diveq"), ``diveq_noise``, ``codebook_update``, ``ema_decay``,
            ``quantizer_dropout``, ``dropout_min_stages``, ``channel_first``.

    The trainable parameter ``codebooks`` has shape (M, K, D).
    """

    title = "residual VQ (RVQ)"

    def __init__(self, num_stages: int, vq_bitrate_per_stage: int, data_dim: int,
                 discard_threshold: float = 0.01, device=CPU, **options):
        super().__init__(num_stages, vq_bitrate_per_stage, data_dim, discard_threshold, device,
                         **options)
        self.codebooks = self._uniform_codebooks(
            (num_stages, self.codebook_size, data_dim), device)

    def _elements_per_row(self, stages: int) -> int:
        return self.codebook_size

    def _tables(self, dtype, stages):
        codebooks = self.codebooks.detach()[:stages].to(dtype)  # (n, K, D)
        laid_out = search_layout(codebooks, 1)  # (n, K, D), the entries in first_argmin's order
        return codebooks, laid_out, laid_out.pow(2).sum(-1)  # (n, K, D), (n, K, D), (n, K)

    def _encode_chunk(self, x, tables, stages):
        """Stage by stage, the nearest codeword to what the stages before left: a stage's
        choice never depends on the stages after it, so the first n codes of an M-stage
        encode are the n-stage encode."""
        codebooks, laid_out, norms = tables
        residual = x.clone()  # (N, D)
        # one buffer each for the distances and the chosen codewords, reused by every stage
        distances = x.new_empty(len(x), self.codebook_size)  # (N, K)
        chosen = torch.empty_like(residual)  # (N, D)
        codes = []
        for stage in range(stages):
            # ||r - c||² - ||r||² = ||c||² - 2 <r, c>, (N, K)
            torch.addmm(norms[stage], residual, laid_out[stage].t(), alpha=-2.0, out=distances)
            index = first_argmin(distances)  # (N,)
            codes.append(index)
            if stage + 1 < stages:  # the last stage's residual is not needed
                residual -= torch.index_select(codebooks[stage], 0, index, out=chosen)
        return torch.stack(codes, dim=1)  # (N, n)

    def _codeword_targets(self, x, codes, quantized):
        """Each codeword's target is the residual its stage quantized, x less the codewords
        of the stages before it, (N, D) per stage: the k-means condition of the greedy
        search."""
        residual = x
        yield residual
        for stage in range(1, codes.shape[1]):
            residual = residual - self._chosen(codes, stage - 1)
            yield residual
