"""Product vector quantization (PVQ) trained with NSVQ.

The D-dimensional vector is split into M contiguous sub-vectors of D/M dimensions;
each is quantized in its own codebook and the results are concatenated.
"""

from __future__ import annotations

import torch

from stochastic_vq.nsvq import CPU, DEFAULT_GROUP, DEFAULT_REPLACEMENT_NOISE, VectorQuantizer


class PVQ(VectorQuantizer):
    """Product VQ with M codebooks of K = 2**vq_bitrate_per_stage entries of dimension D/M.

    Args:
        num_stages: M, number of sub-vectors (codebooks); must divide ``data_dim``.
        vq_bitrate_per_stage: bits per sub-vector, K = 2**bits entries per codebook.
        data_dim: D, dimension of the vectors to quantize.
        discard_threshold: usage fraction below which ``replace_unused_codebooks``
            replaces a codeword.
        device: where the codebooks live.
        check_finite: reject NaN/Inf input (one host sync per call; turn off for speed).
        replacement_noise: noise of a replaced codeword, relative to the codewords' RMS.
        process_group: over which processes ``replace_unused_codebooks`` synchronises:
            "default" (the default group under torch.distributed, as DDP), None (no
            synchronisation) or a torch.distributed.ProcessGroup.

    The trainable parameter ``codebooks`` has shape (M, K, D/M).
    """

    def __init__(self, num_stages: int, vq_bitrate_per_stage: int, data_dim: int,
                 discard_threshold: float = 0.01, device=CPU, *,
                 check_finite: bool = True,
                 replacement_noise: float = DEFAULT_REPLACEMENT_NOISE,
                 process_group=DEFAULT_GROUP):
        super().__init__(num_stages, vq_bitrate_per_stage, data_dim, discard_threshold, device,
                         check_finite=check_finite, replacement_noise=replacement_noise,
                         process_group=process_group)
        if data_dim % num_stages:
            raise ValueError(f"data_dim ({data_dim}) must be divisible by num_stages "
                             f"({num_stages}) for product VQ")
        self.sub_dim = data_dim // num_stages
        self.codebooks = self._uniform_codebooks(
            (num_stages, self.codebook_size, self.sub_dim), device)

    def _elements_per_row(self) -> int:
        return self.num_stages * self.codebook_size

    def _tables(self, dtype):
        codebooks = self.codebooks.detach().to(dtype)  # (M, K, d)
        return codebooks.transpose(1, 2), codebooks.pow(2).sum(-1).unsqueeze(1)  # (M,d,K), (M,1,K)

    def _encode_chunk(self, x, tables):
        codebooks_t, norms = tables
        parts = x.reshape(len(x), self.num_stages, self.sub_dim).transpose(0, 1)  # (M, N, d)
        # ||p - c||² - ||p||² for all subspaces in one batched product, (M, N, K)
        distances = torch.baddbmm(norms, parts, codebooks_t, alpha=-2.0)
        return distances.argmin(dim=2).t()  # (N, M)

    _chained = False

    def _init_target(self, x, residual, stage):
        return x[:, stage * self.sub_dim:(stage + 1) * self.sub_dim]

    def _decode(self, codes):
        return self._gather_codewords(codes).reshape(len(codes), self.data_dim)  # (N, D)
