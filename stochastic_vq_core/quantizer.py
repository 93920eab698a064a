"""``VectorQuantizer``: what AVQ, PVQ and RVQ share.

A subclass says how a batch of vectors is encoded into codeword indices and decoded back
(its hooks, listed in the class's docstring); the base class adds the training-mode
estimator (NSVQ or DiVeQ, ``stochastic_vq_core.estimators``), usage counting, input
checks, replacement of unused codewords (synchronised over the ranks of a process group,
see ``stochastic_vq_core.distributed``), data-dependent initialisation, lookup tables for
nearest-neighbour search, and checkpoints (also the original implementation's).

Notation: ``M`` codebooks (stages), ``K = 2**b`` entries each, ``D`` data dimension.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from stochastic_vq_core.codebook_updates import (
    DEFAULT_CODEBOOK_UPDATE,
    check_codebook_update,
    ema_update,
    restart_statistics,
)
from stochastic_vq_core.distributed import DEFAULT_GROUP, Sync, check_process_group
from stochastic_vq_core.estimators import (
    DEFAULT_ESTIMATOR,
    check_estimator,
    estimate,
)
from stochastic_vq_core.kmeans import CHUNK_ELEMENTS, kmeans, nearest_rows
from stochastic_vq_core.row_sums import sum_rows
from stochastic_vq_core.rules import check_bits_per_stage, check_int, check_real
from stochastic_vq_core.usage import (
    DEFAULT_REPLACEMENT_NOISE,
    count_usage,
    replace_rows,
    usage_limit,
)

CPU = torch.device("cpu")
ACCELERATOR_CHUNK_SCALE = 32  # on GPUs encode chunks are this much larger (2**25 entries)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether non-empty x holds no NaN or Inf: its extremes are finite (NaN propagates).

    One pass over x, several times faster than ``torch.isfinite(x).all()`` on a CPU.
    """
    low, high = torch.aminmax(x)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def full_precision(device: torch.device):
    """A context in which autocast is off on ``device``, so products keep their dtype."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class VectorQuantizer(nn.Module):
    """Base class of AVQ, PVQ and RVQ: training-mode estimator, usage counting, replacement.

    A subclass creates ``self.codebooks`` (an ``nn.Parameter``) in its constructor and
    implements the hooks

    - ``_tables(dtype)``: per-call precomputed tables of the search (codewords in
      ``dtype``, their squared norms, ...);
    - ``_encode_chunk(x, tables)``: codes (n, M) int64 of x (n, D);
    - ``_elements_per_row()``: size of the search's largest temporary per vector (sets the
      chunk size);
    - ``_stage_table(stage)``: a (K, d) view of one codebook (default: ``codebooks[stage]``);

    and may override ``_decode`` (the vector its chosen codewords stand for; default:
    their sum), ``_codeword_targets`` (what each chosen codeword should reconstruct),
    ``_replace`` (which rows one replacement pools), ``_init_target``
    with ``_chained`` (what ``initialize_from_data`` fits each codebook to) and
    ``search_tables`` / ``table_distances`` (nearest-neighbour search by lookup).

    Keyword options (every subclass takes them):
        check_finite: reject NaN/Inf input (one host sync per call; turn off for speed).
        replacement_noise: noise of a replaced codeword, relative to the codewords' RMS.
        process_group: over which processes the quantizer synchronises: the usage and
            the replacement of ``replace_unused_codebooks`` and, with
            ``codebook_update="ema"``, the moving averages' batch statistics, all-reduced
            at every training-mode forward. "default" (the default group under
            torch.distributed, as DDP), None (no synchronisation) or a
            torch.distributed.ProcessGroup.
        estimator: the training-mode output: "nsvq" (the paper's noise substitution, the
            default) or "diveq" (see ``stochastic_vq_core.estimators``).
        diveq_noise: DiVeQ's noise relative to the quantization error's norm (finite,
            >= 0; 0 makes the training output the hard quantization; default 1.0); given
            only with ``estimator="diveq"``.
        codebook_update: how the codebooks learn: "gradient" (the paper's: by the
            optimizer, through the estimator) or "ema" (each training-mode forward moves
            every chosen codeword to the moving average of what it should reconstruct,
            codebook after codebook, as k-means would; the codebooks then take no
            gradient; see ``stochastic_vq_core.codebook_updates``).
        ema_decay: the decay of those moving averages, in [0, 1) (default 0.8); given
            only with ``codebook_update="ema"``.

    Attributes:
        num_stages: M, the number of codebooks.
        codebook_size: K = 2**vq_bitrate_per_stage, entries per codebook
            (``num_codebooks`` is the original's name for it).
        data_dim: D.
        bits_per_vector: M * vq_bitrate_per_stage.
        codebook_usage: (M, K) int64 buffer, batches in which each codeword was used
            since the last replacement (training mode only).
    """

    def __init__(self, num_stages: int, vq_bitrate_per_stage: int, data_dim: int,
                 discard_threshold: float = 0.01, device=CPU, *, check_finite: bool = True,
                 replacement_noise: float = DEFAULT_REPLACEMENT_NOISE,
                 process_group=DEFAULT_GROUP, estimator: str = DEFAULT_ESTIMATOR,
                 diveq_noise: float | None = None,
                 codebook_update: str = DEFAULT_CODEBOOK_UPDATE, ema_decay: float | None = None):
        super().__init__()
        self.num_stages = check_int("num_stages", num_stages)
        self.vq_bitrate_per_stage = check_bits_per_stage("vq_bitrate_per_stage",
                                                         vq_bitrate_per_stage)
        self.data_dim = check_int("data_dim", data_dim)
        self.discard_threshold = check_real("discard_threshold", discard_threshold, 0.0, 1.0)
        self.replacement_noise = check_real("replacement_noise", replacement_noise)
        self.estimator, self.diveq_noise = check_estimator(estimator, diveq_noise)
        self.codebook_update, self.ema_decay = check_codebook_update(codebook_update,
                                                                     ema_decay)
        self.check_finite = bool(check_finite)
        self.process_group = check_process_group(process_group)
        self.codebook_size = 2 ** vq_bitrate_per_stage
        self.bits_per_vector = num_stages * vq_bitrate_per_stage
        self.register_buffer(
            "codebook_usage",
            torch.zeros(num_stages, self.codebook_size, dtype=torch.long, device=device))

    @classmethod
    def build(cls, num_stages: int, vq_bitrate_per_stage: int, data_dim: int, *,
              beam_width: int | None = None, **options) -> VectorQuantizer:
        """A quantizer of this class from the settings every method shares; ``beam_width``
        is for the classes that search with a beam (AVQ) and ignored by the others."""
        return cls(num_stages, vq_bitrate_per_stage, data_dim, **options)

    @property
    def num_codebooks(self) -> int:
        """K, entries per codebook: the original's name for ``codebook_size``."""
        return self.codebook_size

    def _uniform_codebooks(self, shape: tuple[int, ...], device) -> nn.Parameter:
        """Codebooks drawn from Uniform(-1/K, 1/K), the paper's initialisation.

        With ``codebook_update="ema"`` the parameter takes no gradient, and the buffers
        ``ema_count`` (M*K,) and ``ema_sum`` (M*K, d) of its moving averages are made.
        """
        bound = 1.0 / self.codebook_size
        table = torch.empty(shape, device=device).uniform_(-bound, bound)
        if self.codebook_update == "ema":
            rows = table.reshape(self.num_stages * self.codebook_size, -1)  # (MK, d)
            self.register_buffer("ema_count", torch.ones(len(rows), device=device))
            self.register_buffer("ema_sum", rows.clone())
        return nn.Parameter(table, requires_grad=self.codebook_update == "gradient")

    # --- public API -------------------------------------------------------------------

    def forward(self, input_data: torch.Tensor, train_mode: bool | None = None):
        """Quantize ``input_data`` (..., D).

        Args:
            input_data: float tensor whose last dimension is ``data_dim``.
            train_mode: True for the estimator's output (NSVQ by default), differentiable;
                it counts codebook usage and, with ``codebook_update="ema"``, moves the
                codewords. False for the hard-quantized vectors (detached). None follows
                ``self.training``.

        Everything is computed in float32 (float64 for float64 input), also under
        ``torch.autocast``.

        Returns:
            (quantized, codebook_usage): quantized has the input's shape and dtype;
            codebook_usage is an (M, K) int64 snapshot of the usage counters.
        """
        x, shape = self._flatten(input_data, "input_data")  # (N, D) float32 or float64
        if train_mode is None:
            train_mode = self.training
        with full_precision(x.device):
            codes = self._search(x)  # (N, M)
            if train_mode:
                count_usage(self.codebook_usage, codes)
                quantized = self._decode(codes).to(x.dtype)  # (N, D)
                if self.codebook_update == "ema":
                    self._ema_step(x, codes, quantized)
                out = estimate(self.estimator, self.diveq_noise, x, quantized)
            else:
                with torch.no_grad():
                    out = self._decode(codes)
        out = out.to(input_data.dtype)
        if out.shape != shape:
            out = out.reshape(shape)
        return out, self.codebook_usage.clone()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the chosen codewords: (..., D) float -> (..., M) int64."""
        flat, shape = self._flatten(x, "x")
        with full_precision(flat.device):
            codes = self._search(flat)
        return codes.reshape(*shape[:-1], self.num_stages)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Reconstruct vectors from codeword indices: (..., M) int -> (..., D).

        The result has the codebooks' dtype (float32 unless the module was converted).
        """
        self._check_indices(indices)
        flat = indices.reshape(-1, self.num_stages).to(self.codebooks.device, torch.long)
        return self._decode(flat).reshape(*indices.shape[:-1], self.data_dim)

    @torch.no_grad()
    def replace_unused_codebooks(self, num_batches: int, *, verbose: bool = True,
                                 generator: torch.Generator | None = None,
                                 optimizer: torch.optim.Optimizer | None = None
                                 ) -> torch.Tensor:
        """Replace codewords used in fewer than ``discard_threshold`` of the last batches.

        Call it every ``num_batches`` training batches. A codeword whose usage count
        divided by ``num_batches`` is below ``discard_threshold`` is unused; each unused
        codeword is overwritten by a randomly chosen used codeword of the same codebook
        (AVQ: of the whole table) plus small noise, so it can start to learn where the
        data are. If no codeword of a codebook is used, that codebook is perturbed.
        Then the usage counters are reset to zero. Replacing regularly helps all
        codewords take part; stop calling it in the last part of training so that new
        codewords have time to settle (the example scripts skip the last
        ``2 * num_batches`` steps).

        Synchronised over ``process_group`` (by default the default process group, when
        ``torch.distributed`` runs more than one process, as DDP does): every process of
        the group must call it at the same step; usage is summed over them, the
        replacement is decided by the group's rank 0 and broadcast, so all replicas stay
        equal. Set ``process_group=None`` for a quantizer that each process trains alone.

        Args:
            num_batches: batches since the last call (>= 1).
            verbose: print one line with the number of replaced codewords.
            generator: optional torch.Generator (CPU) for the random choices.
            optimizer: optional optimizer of ``codebooks``; its per-entry state (Adam's
                moments, SGD's momentum) of the replaced codewords is set to zero, so
                they start afresh rather than with the dead entries' history.

        Returns:
            (M,) int64 CPU tensor, the number of codewords replaced in each codebook.
        """
        check_int("num_batches", num_batches)
        sync = Sync(self.process_group)
        usage = sync.sum(self.codebook_usage)
        unused = usage < usage_limit(self.discard_threshold, num_batches * sync.size)  # (M, K)
        if sync.leader:
            self._replace(unused, generator)
        sync.broadcast(self.codebooks.detach())
        if self.codebook_update == "ema":
            restart_statistics(self._rows(), self.ema_count, self.ema_sum, unused.flatten())
        if optimizer is not None:
            self._reset_optimizer_state(optimizer, unused)
        self.codebook_usage.zero_()
        replaced = unused.sum(dim=1).cpu()
        if verbose and sync.leader:
            per_codebook = ", ".join(str(int(n)) for n in replaced)
            print(f"Replaced {int(replaced.sum())} of {unused.numel()} codebook entries "
                  f"(per codebook: {per_codebook})")
        return replaced

    @torch.no_grad()
    def search_tables(self, queries: torch.Tensor) -> torch.Tensor:
        """Lookup tables (Q, M, K), float32 on the codebooks' device, for asymmetric search.

        For a quantizer that sums its codewords (AVQ, RVQ): the inner products
        ``<q, c_mk>`` of each query q (Q, D) with every codeword; ``table_distances``
        turns their sums over a code's entries into squared distances.
        """
        q = queries.to(self.codebooks.device, torch.float32)  # (Q, D)
        codebooks = self.codebooks.detach().reshape(
            self.num_stages, self.codebook_size, self.data_dim)  # (M, K, D)
        return torch.einsum("qd,mkd->qmk", q, codebooks)

    def table_distances(self, table_sums: torch.Tensor, queries: torch.Tensor,
                        decoded_norms: torch.Tensor) -> torch.Tensor:
        """Squared distances (Q, N) from queries (Q, D) to decoded database vectors.

        table_sums: (Q, N) sums over the M codebooks of the ``search_tables`` entries that
        each database code picks; decoded_norms: (N,) squared norms of the decoded vectors.
        ``||q - x||² = ||q||² - 2 Σ_m <q, c_m> + ||x||²``.
        """
        query_norms = queries.float().to(table_sums.device).pow(2).sum(1, keepdim=True)
        return query_norms - 2.0 * table_sums + decoded_norms.unsqueeze(0)

    @torch.no_grad()
    def initialize_from_data(self, samples: torch.Tensor, *, kmeans_iterations: int = 10,
                             disjoint: bool = False,
                             generator: torch.Generator | None = None) -> None:
        """Data-dependent initialisation, for data far from the paper's ±1/K codebooks.

        Codebook by codebook, in stage order, the codewords are set to k-means centroids
        (``kmeans_iterations`` Lloyd iterations from random samples) of what that
        codebook quantizes: the sub-vectors (PVQ) or the residual left by the codebooks
        already initialised (RVQ, and AVQ in codebook order). Usage counters are reset.

        Args:
            samples: (..., D) training vectors; a few times K of them or more is best.
            kmeans_iterations: Lloyd iterations per codebook; 0 takes random samples.
            disjoint: RVQ and AVQ fit each codebook to the residuals of its own 1/M share
                of the samples (every M-th one). Otherwise a codebook sees the residuals
                of the very vectors the earlier codebooks were fitted to, which are
                smaller than those of new vectors; with few samples per codeword in high
                dimension (say under a few hundred at D >= 128) the later codebooks then
                fit the wrong scale. Use it when samples are plentiful (e.g. 64 * M * K
                or more). PVQ, whose codebooks do not depend on each other, always uses
                all samples.
            generator: optional CPU torch.Generator for the random choices.
        """
        x, _ = self._flatten(samples, "samples")
        with full_precision(x.device):
            self._initialize(x, kmeans_iterations, bool(disjoint), generator)
        if self.codebook_update == "ema":
            restart_statistics(self._rows(), self.ema_count, self.ema_sum)
        self.codebook_usage.zero_()

    def _initialize(self, x: torch.Tensor, kmeans_iterations: int, disjoint: bool,
                    generator: torch.Generator | None) -> None:
        split = disjoint and self._chained
        needed = self.num_stages if split else 1
        if len(x) < needed:
            raise ValueError(f"samples must hold at least {needed} vector(s), got {len(x)}")
        check_int("kmeans_iterations", kmeans_iterations, minimum=0)
        residual = x
        for stage in range(self.num_stages):
            if split:  # every M-th sample, so that the shares are alike even for sorted data
                residual = x[stage::self.num_stages]
                for earlier in range(stage):
                    residual = self._less_nearest(residual, earlier)
            target = self._init_target(x, residual, stage)  # (N, d)
            self._stage_table(stage).copy_(
                kmeans(target, self.codebook_size, kmeans_iterations, generator))
            if self._chained and not split:
                residual = self._less_nearest(target, stage)

    def _less_nearest(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """x (N, d) less its nearest codeword in codebook ``stage``."""
        table = self._stage_table(stage).to(x.dtype)
        return x - table[nearest_rows(x, table)]

    def extra_repr(self) -> str:
        text = (f"num_stages={self.num_stages}, vq_bitrate_per_stage={self.vq_bitrate_per_stage}, "
                f"data_dim={self.data_dim}, discard_threshold={self.discard_threshold}")
        if self.estimator != DEFAULT_ESTIMATOR:
            text += f", estimator={self.estimator!r}, diveq_noise={self.diveq_noise}"
        if self.codebook_update != DEFAULT_CODEBOOK_UPDATE:
            text += f", codebook_update={self.codebook_update!r}, ema_decay={self.ema_decay}"
        return text

    def _search(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (N, M) of x (N, D), searched in inference mode.

        Inference mode spares the search's many small operations the autograd bookkeeping
        that ``no_grad`` still does; the codes are copied out as an ordinary tensor, which
        autograd may save and the caller may modify. Under ``torch.compile``, which traces
        no inference mode inside a training graph (and has no per-operation cost to
        spare), ``no_grad`` is used.
        """
        if torch.compiler.is_compiling():
            with torch.no_grad():
                return self._encode(x)
        with torch.inference_mode():
            codes = self._encode(x)
        return codes.clone()

    # --- subclass hooks ---------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encode x (N, D) in chunks of at most ``_chunk_rows()`` rows -> (N, M)."""
        tables = self._tables(x.dtype)
        rows = self._chunk_rows(x.device)
        if len(x) <= rows:
            return self._encode_chunk(x, tables)
        return torch.cat([self._encode_chunk(chunk, tables) for chunk in x.split(rows)])

    def _chunk_rows(self, device: torch.device) -> int:
        """Rows encoded at once: the largest temporary has about CHUNK_ELEMENTS entries
        on CPU, so it stays in cache, and ACCELERATOR_CHUNK_SCALE times more elsewhere."""
        budget = CHUNK_ELEMENTS * (1 if device.type == "cpu" else ACCELERATOR_CHUNK_SCALE)
        return max(1, budget // self._elements_per_row())

    def _elements_per_row(self) -> int:
        raise NotImplementedError

    def _tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Per-call precomputed tables (codewords in ``dtype``, their squared norms, ...)."""
        raise NotImplementedError

    def _encode_chunk(self, x: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Vectors (N, D) of codes (N, M), differentiable in ``codebooks``: by default the
        sum of the chosen codewords (AVQ, RVQ)."""
        return sum_rows(*self._indexed_rows(codes))

    def _gather_codewords(self, codes: torch.Tensor) -> torch.Tensor:
        """The chosen codewords (N, M, d) for codes (N, M), differentiable in ``codebooks``.

        index_select, whose backward is an index_add, trains several times faster on a CPU
        than an embedding lookup."""
        table, rows = self._indexed_rows(codes)
        return table.index_select(0, rows.reshape(-1)).view(len(codes), self.num_stages,
                                                            table.shape[1])

    def _indexed_rows(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All codewords as a (M*K, d) view of ``codebooks`` (differentiable) and codes
        (N, M) offset into its rows."""
        table = self.codebooks.reshape(self.num_stages * self.codebook_size, -1)
        return table, codes + self._offsets(codes.device)

    def _rows(self) -> torch.Tensor:
        """All codewords as a (M*K, d) view of ``codebooks``, codebook m in rows
        m*K ... (m+1)*K - 1 (no gradient)."""
        return self.codebooks.detach().view(self.num_stages * self.codebook_size, -1)

    def _offsets(self, device) -> torch.Tensor:
        """(M,) the first row of each codebook in ``_rows()``."""
        return torch.arange(0, self.num_stages * self.codebook_size, self.codebook_size,
                            device=device)

    def _ema_step(self, x: torch.Tensor, codes: torch.Tensor, quantized: torch.Tensor) -> None:
        """Move the codewords chosen for x (N, D) by codes (N, n), which decode to quantized
        (N, D), toward their targets: the first n <= M codebooks, one after another.

        Codebook s's targets are drawn after codebooks 0 ... s-1 moved, so they see the
        earlier codebooks' new codewords (``_codeword_targets``); a codebook past n keeps
        its codewords and statistics.
        """
        sync = Sync(self.process_group)
        entries = self.codebook_size
        targets = self._codeword_targets(x.detach(), codes, quantized.detach())
        for stage, stage_targets in enumerate(targets):  # (N, d), after stage - 1 moved
            rows = slice(stage * entries, (stage + 1) * entries)
            chosen = codes[:, stage]  # (N,)
            sums = torch.zeros_like(self.ema_sum[rows]).index_add_(
                0, chosen, stage_targets.to(self.ema_sum.dtype))  # (K, d)
            ema_update(self._stage_table(stage), self.ema_count[rows], self.ema_sum[rows],
                       chosen, sums, self.ema_decay, sync.sum)

    def _codeword_targets(self, x: torch.Tensor, codes: torch.Tensor,
                          quantized: torch.Tensor) -> Iterator[torch.Tensor]:
        """What the codewords chosen by codes (N, n) for x (N, D) should reconstruct, codebook
        by codebook (N, d); quantized (N, D) is their decoding before any moved.

        ``_ema_step`` moves codebook s before it draws the next target, so a target may
        use the codewords of the codebooks before it as they are then. By default (AVQ,
        whose codewords are chosen jointly) x less the other chosen codewords: the earlier
        codebooks' moved ones and the later ones' not yet moved, as each step of
        iterated conditional modes (alternating least squares) would.
        """
        residual = x - quantized  # (N, D) what the chosen codewords leave
        for stage in range(codes.shape[1]):
            target = residual + self._chosen(codes, stage)
            yield target
            residual = target - self._chosen(codes, stage)  # with codebook stage moved

    def _chosen(self, codes: torch.Tensor, stage: int) -> torch.Tensor:
        """The codewords (N, d) that codes (N, M) choose in codebook ``stage`` (no gradient)."""
        return self._stage_table(stage).index_select(0, codes[:, stage])

    def _replace(self, unused: torch.Tensor, generator: torch.Generator | None) -> None:
        """Replace unused codewords codebook by codebook; unused: (M, K) bool."""
        for stage in range(self.num_stages):
            replace_rows(self._stage_table(stage), unused[stage], self.replacement_noise, generator)

    def _reset_optimizer_state(self, optimizer: torch.optim.Optimizer,
                               unused: torch.Tensor) -> None:
        """Zero the optimizer's per-entry state of the codewords marked in unused (M, K)."""
        for value in optimizer.state.get(self.codebooks, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == self.codebooks.shape:
                rows = value.view(self.num_stages * self.codebook_size, -1)  # (MK, d)
                rows[unused.flatten()] = 0

    _chained = True  # a codebook quantizes what the earlier ones leave (RVQ, AVQ)

    def _init_target(self, x: torch.Tensor, residual: torch.Tensor, stage: int) -> torch.Tensor:
        """What codebook ``stage`` quantizes during ``initialize_from_data``, (N, d)."""
        return residual

    def _stage_table(self, stage: int) -> torch.Tensor:
        """A (K, d) view of codebook ``stage`` inside ``self.codebooks``."""
        return self.codebooks.detach()[stage]

    # --- checks and loading -----------------------------------------------------------

    def _flatten(self, x, name: str) -> tuple[torch.Tensor, torch.Size]:
        """Check ``x`` (..., D) and return it as (N, D) on the codebooks' device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.data_dim:
            hint = ""
            if x.dim() == 4 and x.shape[1] == self.data_dim:
                hint = ("; for a conv feature map (B, C, H, W) pass x.permute(0, 2, 3, 1) "
                        "(channels last) and permute the output back with .permute(0, 3, 1, 2)")
            raise ValueError(f"{name} must have shape (..., {self.data_dim}), "
                             f"got {tuple(x.shape)}{hint}")
        if x.device != self.codebooks.device:
            raise ValueError(f"{name} is on {x.device} but the codebooks are on "
                             f"{self.codebooks.device}; move the module with .to()")
        if self.check_finite and x.numel() and not _all_finite(x):
            raise ValueError(f"{name} contains NaN or Inf values")
        work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        flat = x if x.dim() == 2 else x.reshape(-1, self.data_dim)  # no extra autograd node
        return flat.to(work_dtype), x.shape

    def _check_indices(self, indices) -> None:
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.dim() == 0 or indices.shape[-1] != self.num_stages:
            raise ValueError(f"indices must have shape (..., {self.num_stages}) (one index per "
                             f"codebook), got {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"indices must be in [0, {self.codebook_size - 1}], got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")

    def get_extra_state(self) -> dict:
        """What a checkpoint records beside the tensors: the class and the estimator."""
        return {"quantizer": type(self).__name__, "estimator": self.estimator,
                "codebook_update": self.codebook_update}

    def set_extra_state(self, state: dict) -> None:
        """Nothing to restore: the estimator is the module's own (checked on loading)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # Checkpoints of the original implementation hold only ``codebooks``; those of
        # versions before 2.1 lack the extra state. A state dict records the class that
        # wrote it: loading it into another class is refused even when shapes match. The
        # estimator may differ: the codebooks are the same kind of object.
        if prefix + "codebooks" in state_dict:
            state_dict.setdefault(prefix + "codebook_usage", torch.zeros_like(self.codebook_usage))
            state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
            if self.codebook_update == "ema" and prefix + "ema_count" not in state_dict:
                codebooks = state_dict[prefix + "codebooks"]  # statistics of these codewords
                state_dict[prefix + "ema_count"] = torch.ones_like(self.ema_count)
                state_dict[prefix + "ema_sum"] = codebooks.reshape(self.ema_sum.shape).to(
                    self.ema_sum.dtype).clone()
            if self.codebook_update != "ema":  # moving averages mean nothing to gradients
                state_dict.pop(prefix + "ema_count", None)
                state_dict.pop(prefix + "ema_sum", None)
        saved = state_dict.get(prefix + "_extra_state")
        if isinstance(saved, dict) and saved.get("quantizer") not in (None, type(self).__name__):
            error_msgs.append(f"the state dict was written by a {saved['quantizer']}, not "
                              f"a {type(self).__name__}")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
