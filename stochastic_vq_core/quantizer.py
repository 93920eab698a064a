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
from torch.nn import functional as F

from stochastic_vq_core.codebook_updates import (
    DEFAULT_CODEBOOK_UPDATE,
    check_codebook_update,
    ema_relaxation,
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
from stochastic_vq_core.rules import (
    check_bits_per_stage,
    check_bool,
    check_int,
    check_real,
    invalid,
)
from stochastic_vq_core.stages import draw_stages, stage_groups
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
    """A context in which autocast is off on ``device``, so products keep their dtype
    (an autocast context only where autocast is on: entering one costs several
    microseconds, which show in small batches' training steps)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class VectorQuantizer(nn.Module):
    """Base class of AVQ, PVQ and RVQ: training-mode estimator, usage counting, replacement.

    A subclass creates ``self.codebooks`` (an ``nn.Parameter``) in its constructor and
    implements the hooks

    - ``_tables(dtype, stages)``: per-call precomputed tables of the search with the
      first ``stages`` codebooks (codewords in ``dtype``, their squared norms, ...);
    - ``_encode_chunk(x, tables, stages)``: codes (n, stages) int64 of x (n, D), one
      index into each of the first ``stages`` codebooks;
    - ``_elements_per_row(stages)``: size of the search's largest temporary per vector
      (sets the chunk size);
    - ``_stage_table(stage)``: a (K, d) view of one codebook (default: ``codebooks[stage]``);

    and may override ``_decode`` (the vector its chosen codewords stand for; default:
    their sum), ``_codeword_targets`` (what each chosen codeword should reconstruct) with
    ``_ema_share`` (how much of its correction it takes), ``_replace`` (which rows one
    replacement pools), ``_init_target`` with ``_chained`` (what ``initialize_from_data``
    fits each codebook to), ``search_tables`` / ``table_distances`` (nearest-neighbour
    search by lookup) and ``_needs_all_stages`` (why its codes need all M codebooks;
    None, the default, when the first n codebooks code a vector at a lower rate).

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
            as k-means would; the codebooks then take no gradient; see
            ``stochastic_vq_core.codebook_updates``).
        ema_decay: the decay of those moving averages, in [0, 1) (default 0.8); given
            only with ``codebook_update="ema"``.
        quantizer_dropout: the share of training examples, each drawn independently,
            that use only their first n codebooks, n uniform in
            [``dropout_min_stages``, M] (SoundStream's structured dropout is 1.0): one
            model then codes at every rate from ``dropout_min_stages`` to M codebooks.
            Drawn per example (the first axis of the input; each vector of 2-D input),
            so that every batch trains every rate; from torch's default CPU generator,
            so a seeded run repeats it. 0 (the default) trains all M codebooks.
        dropout_min_stages: the fewest codebooks a dropped example uses (1 ... M).
        channel_first: the input is (B, D, ...), the data dimension second, as a
            convolution's output; the output, ``encode``'s codes (B, n, ...), ``decode``'s
            codes and output and ``mask`` ((B, ...)) follow that layout. Default: the
            data dimension last, (..., D), codes (..., n).

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
                 codebook_update: str = DEFAULT_CODEBOOK_UPDATE, ema_decay: float | None = None,
                 quantizer_dropout: float = 0.0, dropout_min_stages: int = 1,
                 channel_first: bool = False):
        super().__init__()
        self.num_stages = check_int("num_stages", num_stages)
        self.quantizer_dropout = check_real("quantizer_dropout", quantizer_dropout, 0.0, 1.0)
        if self.quantizer_dropout:
            self._refuse_fewer_stages("quantizer_dropout", "0", str(quantizer_dropout))
        self.dropout_min_stages = check_int("dropout_min_stages", dropout_min_stages, 1,
                                            num_stages)
        self.channel_first = check_bool("channel_first", channel_first)
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
        self._frozen = False  # see ``frozen``
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

    def forward(self, input_data: torch.Tensor, train_mode: bool | None = None, *,
                num_stages: int | None = None, mask: torch.Tensor | None = None,
                return_codes: bool = False):
        """Quantize ``input_data`` (..., D), or (B, D, ...) with ``channel_first=True``.

        Args:
            input_data: float tensor whose last dimension is ``data_dim``.
            train_mode: True for the estimator's output (NSVQ by default), differentiable;
                it counts codebook usage and, with ``codebook_update="ema"``, moves the
                codewords (neither inside ``frozen()``). False for the hard-quantized
                vectors (detached). None follows ``self.training``.
            num_stages: code with the first n codebooks only (1 <= n <= M; quantizers
                whose codes need all M refuse fewer); in training it also turns
                quantizer dropout off. None: all M, or in training the numbers that
                quantizer dropout draws.
            mask: bool tensor of the input's shape without the data dimension (``(B,
                ...)`` for channel-first input), False for vectors to leave out (padding):
                they are returned unchanged, get no codebook gradient and count nowhere
                (usage, moving averages, replacement). On the CPU or the input's device;
                in training, one on an accelerator costs one host synchronisation.
            return_codes: also return the codes of the same search.

        Everything is computed in float32 (float64 for float64 input), also under
        ``torch.autocast``.

        Returns:
            (quantized, codebook_usage), or (quantized, codebook_usage, codes) with
            ``return_codes``: quantized has the input's shape and dtype; codebook_usage
            is an (M, K) int64 snapshot of the usage counters; codes (..., n) int64, as
            ``encode`` gives them, with -1 for a codebook a vector did not use (dropped by
            quantizer dropout, or masked out); n is ``num_stages``, or M when quantizer
            dropout draws.
        """
        self._check_codebooks_trainable()
        x, shape = self._flatten(input_data, "input_data")  # (N, D) float32 or float64
        stages = self._check_stages(num_stages)
        keep = self._check_mask(mask, shape)  # (N,) bool or None
        check_bool("return_codes", return_codes)
        if train_mode is None:
            train_mode = self.training
        with full_precision(x.device):
            if train_mode:
                dropout = num_stages is None and self.quantizer_dropout > 0
                examples = (shape[0] if len(shape) > 1 else 1) if dropout else None
                out, codes = self._train(x, stages, examples, keep)
            else:
                out, codes = self._quantize(x, stages, keep)
        out = self._restore(out.to(input_data.dtype), shape)
        usage = self.codebook_usage.clone()
        if return_codes:
            return out, usage, self._restore(codes, shape)
        return out, usage

    def encode(self, x: torch.Tensor, *, num_stages: int | None = None) -> torch.Tensor:
        """Indices of the chosen codewords: (..., D) float -> (..., n) int64, or (B, D, ...)
        -> (B, n, ...) with ``channel_first=True``.

        ``num_stages``: code with the first n codebooks (1 <= n <= M; None: all M). For
        RVQ, whose stages choose one after another, the first n codes of a full encode
        are the n-stage encode; AVQ searches the n codebooks jointly, so its codes may
        differ from the first n of a full encode.
        """
        flat, shape = self._flatten(x, "x")
        stages = self._check_stages(num_stages)
        with full_precision(flat.device):
            codes = self._search(flat, stages)  # (N, n)
        return self._restore(codes, shape)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Reconstruct vectors from codeword indices: (..., n) int -> (..., D), or (B, n,
        ...) -> (B, D, ...) with ``channel_first=True``; n <= M codes decode with the
        first n codebooks.

        The result has the codebooks' dtype (float32 unless the module was converted).
        """
        flat, shape = self._check_indices(indices)  # (N, n), the indices' channel-last shape
        out = self._decode(flat.to(self.codebooks.device, torch.long))  # (N, D)
        return self._restore(out, (*shape[:-1], self.data_dim))

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """A context in which training-mode forwards leave the codebooks as they are.

        Inside, a training-mode forward gives the estimator's output as usual but counts
        no usage and moves no moving averages: for extra forwards of a training step (a
        GAN's discriminator pass, activation recomputation). Gradients still reach
        ``codebooks`` when they require them (``codebook_update="gradient"``); leave them
        out of the optimizer's step if those should not move either.
        """
        previous, self._frozen = self._frozen, True
        try:
            yield
        finally:
            self._frozen = previous

    def bitrate(self, vectors_per_second: float, *, num_stages: int | None = None) -> float:
        """Bits per second: bits per vector (n codebooks x ``vq_bitrate_per_stage``) times
        ``vectors_per_second``, with the first ``num_stages`` codebooks (None: all M)."""
        rate = check_real("vectors_per_second", vectors_per_second)
        return self._check_stages(num_stages) * self.vq_bitrate_per_stage * rate

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
                             generator: torch.Generator | None = None,
                             mask: torch.Tensor | None = None) -> None:
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
            mask: bool tensor of the samples' shape without the data dimension, False
                for samples to leave out (padding), as ``forward``'s.
        """
        x, shape = self._flatten(samples, "samples")  # (N, D)
        keep = self._check_mask(mask, shape)
        if keep is not None:
            x = x[keep.to(x.device)]
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

    def _train(self, x: torch.Tensor, stages: int, examples: int | None,
               keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-mode output (N, D) and codes (N, w) of x (N, D).

        Every vector uses the first ``stages`` codebooks, or, when ``examples`` (B) is
        given, the number quantizer dropout draws for its example (B examples of N/B
        consecutive vectors each); the vectors that ``keep`` (N,) marks False are
        returned as they are, with codes -1. Vectors that use the same codebooks are
        searched, decoded and learnt from as a group; the estimator runs over all kept
        vectors in their own order.
        """
        if examples is None and keep is None:  # every vector, the same codebooks
            codes = self._search(x, stages)  # (N, n)
            quantized = self._decode(codes).to(x.dtype)  # (N, D)
            self._learn([(x, codes, quantized)])
            return estimate(self.estimator, self.diveq_noise, x, quantized), codes
        return self._train_groups(x, stages, examples, keep)

    @torch.compiler.disable
    def _train_groups(self, x: torch.Tensor, stages: int, examples: int | None,
                      keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``_train`` for vectors that use different codebooks or are masked out. The
        groups' sizes depend on the data, so torch.compile runs this part eagerly."""
        if examples is None:
            width, per_row = stages, torch.full((len(x),), stages)  # (N,)
        else:
            width = self.num_stages
            per_example = draw_stages(examples, self.quantizer_dropout,
                                      self.dropout_min_stages, self.num_stages)  # (B,)
            per_row = per_example.repeat_interleave(len(x) // examples)  # (N,)
        order, groups = stage_groups(per_row, None if keep is None else keep.cpu())
        order = order.to(x.device)  # (R,) the kept vectors, grouped
        codes = torch.full((len(x), width), -1, dtype=torch.long, device=x.device)  # (N, w)
        kept = x.index_select(0, order)  # (R, D)
        parts = []
        for part, (_, n) in zip(kept.split([size for size, _ in groups]), groups):
            part_codes = self._search(part, n)  # (R_g, n)
            parts.append((part, part_codes, self._decode(part_codes).to(x.dtype)))
        self._learn(self._with_other_processes_groups(parts, kept[:0]))
        if not parts:  # every vector masked out
            return x.clone(), codes
        quantized = torch.cat([part_quantized for _, _, part_quantized in parts])  # (R, D)
        kept_codes = torch.cat([F.pad(part_codes, (0, width - part_codes.shape[1]), value=-1)
                                for _, part_codes, _ in parts])  # (R, w)
        out = estimate(self.estimator, self.diveq_noise, kept, quantized)  # (R, D)
        return x.index_copy(0, order, out), codes.index_copy_(0, order, kept_codes)

    def _with_other_processes_groups(self, groups: list, empty: torch.Tensor) -> list:
        """``groups`` (x, codes (N_g, n), quantized) in ascending n, with an empty group
        for each n that only other processes of the process group use, when moving
        averages are summed over several processes: every process then updates the same
        codebooks, which stay equal. Costs one host synchronisation there.
        ``empty``: (0, D)."""
        sync = Sync(self.process_group)
        if sync.size == 1 or self.codebook_update != "ema":
            return groups
        used = torch.zeros(self.num_stages + 1, device=empty.device)  # (M + 1,) n used here
        for _, codes, _ in groups:
            used[codes.shape[1]] = 1
        everywhere = sync.sum(used).nonzero().flatten().tolist()
        here = {group[1].shape[1]: group for group in groups}
        none = empty.new_zeros(0, dtype=torch.long)
        return [here.get(n, (empty, none.view(0, n), empty)) for n in everywhere]

    def _quantize(self, x: torch.Tensor, stages: int, keep: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard-quantized x (N, D) with the first ``stages`` codebooks (detached) and its
        codes (N, n); the vectors that ``keep`` (N,) marks False stay as they are, with
        codes -1."""
        codes = self._search(x, stages)  # (N, n)
        with torch.no_grad():
            out = self._decode(codes)  # (N, D)
        if keep is not None:
            keep = keep.to(x.device).unsqueeze(1)  # (N, 1)
            out = torch.where(keep, out, x.detach())
            codes = codes.masked_fill(~keep, -1)
        return out, codes

    def _learn(self, groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Count usage and take the moving-average step of one training forward, from the
        groups (x (N_g, D), codes (N_g, n), quantized (N_g, D)) of vectors that use the
        first n codebooks. A codeword that several groups use counts once. Nothing
        happens inside ``frozen()``."""
        if self._frozen:
            return
        if len(groups) == 1:
            count_usage(self.codebook_usage, groups[0][1])
        else:
            used = torch.zeros_like(self.codebook_usage)  # (M, K) groups that used each
            for _, codes, _ in groups:
                count_usage(used, codes)
            self.codebook_usage.add_(used.clamp_(max=1))
        if self.codebook_update == "ema" and groups:
            self._ema_steps(groups)

    def _restore(self, flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """flat (N, w) in the caller's layout: (*shape[:-1], w) for a channel-last
        ``shape`` (..., D), with its last axis moved second under ``channel_first``."""
        target = (*shape[:-1], flat.shape[-1])
        out = flat if flat.shape == target else flat.reshape(target)
        return out.movedim(-1, 1) if self.channel_first and out.dim() > 1 else out

    def _search(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """Codes (N, stages) of x (N, D) with the first ``stages`` codebooks, searched in
        inference mode.

        Inference mode spares the search's many small operations the autograd bookkeeping
        that ``no_grad`` still does; the codes are copied out as an ordinary tensor, which
        autograd may save and the caller may modify. Under ``torch.compile``, which traces
        no inference mode inside a training graph (and has no per-operation cost to
        spare), ``no_grad`` is used.
        """
        if torch.compiler.is_compiling():
            with torch.no_grad():
                return self._encode(x, stages)
        with torch.inference_mode():
            codes = self._encode(x, stages)
        return codes.clone()

    # --- subclass hooks ---------------------------------------------------------------

    def _encode(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """Encode x (N, D) with the first ``stages`` codebooks in chunks of at most
        ``_chunk_rows()`` rows -> (N, stages)."""
        tables = self._tables(x.dtype, stages)
        rows = self._chunk_rows(x.device, stages)
        if len(x) <= rows:
            return self._encode_chunk(x, tables, stages)
        return torch.cat([self._encode_chunk(chunk, tables, stages) for chunk in x.split(rows)])

    def _chunk_rows(self, device: torch.device, stages: int) -> int:
        """Rows encoded at once: the largest temporary has about CHUNK_ELEMENTS entries
        on CPU, so it stays in cache, and ACCELERATOR_CHUNK_SCALE times more elsewhere."""
        budget = CHUNK_ELEMENTS * (1 if device.type == "cpu" else ACCELERATOR_CHUNK_SCALE)
        return max(1, budget // self._elements_per_row(stages))

    def _elements_per_row(self, stages: int) -> int:
        raise NotImplementedError

    def _tables(self, dtype: torch.dtype, stages: int) -> tuple[torch.Tensor, ...]:
        """Per-call precomputed tables of the first ``stages`` codebooks (codewords in
        ``dtype``, their squared norms, ...)."""
        raise NotImplementedError

    def _encode_chunk(self, x: torch.Tensor, tables: tuple[torch.Tensor, ...],
                      stages: int) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Vectors (N, D) of codes (N, n) into the first n codebooks, differentiable in
        ``codebooks``: by default the sum of the chosen codewords (AVQ, RVQ)."""
        return sum_rows(*self._indexed_rows(codes))

    def _gather_codewords(self, codes: torch.Tensor) -> torch.Tensor:
        """The chosen codewords (N, n, d) for codes (N, n), differentiable in ``codebooks``.

        index_select, whose backward is an index_add, trains several times faster on a CPU
        than an embedding lookup."""
        table, rows = self._indexed_rows(codes)
        return table.index_select(0, rows.reshape(-1)).view(*codes.shape, table.shape[1])

    def _indexed_rows(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All codewords as (M*K, d), ``codebooks`` itself or a view of it (differentiable),
        and codes (N, n) into the first n codebooks offset into its rows."""
        table = self.codebooks
        if table.dim() != 2:  # (M, K, d); a view of (M*K, d) codebooks would only add a node
            table = table.reshape(self.num_stages * self.codebook_size, -1)
        return table, codes + self._offsets(codes.device, codes.shape[1])

    def _rows(self) -> torch.Tensor:
        """All codewords as a (M*K, d) view of ``codebooks``, codebook m in rows
        m*K ... (m+1)*K - 1 (no gradient)."""
        return self.codebooks.detach().view(self.num_stages * self.codebook_size, -1)

    def _offsets(self, device, stages: int) -> torch.Tensor:
        """(stages,) the first row of each of the first ``stages`` codebooks in ``_rows()``."""
        return torch.arange(0, stages * self.codebook_size, self.codebook_size, device=device)

    def _ema_steps(self, groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                   ) -> None:
        """One moving-average step of a training forward: the codewords chosen for the
        groups (x (N_g, D), codes (N_g, n), quantized (N_g, D)) of vectors that use the
        first n codebooks move toward their targets, all at once. The statistics of each
        codebook that some group uses decay once, whatever the number of groups; a
        codebook past every group's n keeps its codewords and statistics.

        Each codeword moves toward its codeword plus ``_ema_share(n)`` of its correction
        (target less codeword), so that an error the vectors share is not corrected n
        times over where the codebooks' errors add up.
        """
        sums = torch.zeros_like(self.ema_sum)  # (MK, d) the batch's sum of targets per row
        chosen_rows = []
        for x, codes, quantized in groups:
            stages = codes.shape[1]
            relaxation = self._ema_share(stages)
            rows = codes + self._offsets(codes.device, stages)  # (N_g, n) rows of _rows()
            targets = self._codeword_targets(x.detach(), codes, quantized.detach())
            for stage, stage_targets in enumerate(targets):  # (N_g, d)
                if relaxation < 1.0:
                    chosen = self._chosen(codes, stage).to(stage_targets.dtype)
                    stage_targets = torch.lerp(chosen, stage_targets, relaxation)
                sums.index_add_(0, rows[:, stage], stage_targets.to(sums.dtype))
            chosen_rows.append(rows.reshape(-1))
        stages = max(codes.shape[1] for _, codes, _ in groups)
        used = slice(0, stages * self.codebook_size)  # the rows of the codebooks used
        ema_update(self._rows()[used], self.ema_count[used], self.ema_sum[used],
                   torch.cat(chosen_rows), sums[used], self.ema_decay,
                   Sync(self.process_group).sum)

    def _ema_share(self, stages: int) -> float:
        """The share of its correction that each codeword takes when the first ``stages``
        codebooks move at once: by default (AVQ, RVQ, whose codewords add up) the
        relaxation ``ema_relaxation`` of the codebooks' summed corrections."""
        return ema_relaxation(stages, self.ema_decay)

    def _codeword_targets(self, x: torch.Tensor, codes: torch.Tensor,
                          quantized: torch.Tensor) -> Iterator[torch.Tensor]:
        """What the codewords chosen by codes (N, n) for x (N, D) should reconstruct, stage
        by stage (N, d); quantized (N, D) is their decoding. By default (AVQ, whose
        codewords are chosen jointly) x less the other chosen codewords."""
        for stage in range(codes.shape[1]):
            yield x - (quantized - self._chosen(codes, stage))

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

    _needs_all_stages: str | None = None  # why a code needs all M codebooks (PVQ), if so

    def _flatten(self, x, name: str) -> tuple[torch.Tensor, torch.Size]:
        """Check ``x`` (..., D), or (B, D, ...) with ``channel_first``, and return it as
        (N, D) on the codebooks' device with its channel-last shape (..., D)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")
        given = tuple(x.shape)
        if self.channel_first and x.dim() > 1:
            x = x.movedim(1, -1)  # (B, ..., D)
        if x.dim() == 0 or x.shape[-1] != self.data_dim:
            raise ValueError(self._shape_message(name, given))
        if x.device != self.codebooks.device:
            raise ValueError(f"{name} is on {x.device} but the codebooks are on "
                             f"{self.codebooks.device}; move the module with .to()")
        if self.check_finite:
            if torch.compiler.is_compiling():  # kept in the graph, no host synchronisation
                torch._assert_async(torch.isfinite(x).all(), f"{name} contains NaN or Inf values")
            elif x.numel() and not _all_finite(x):
                raise ValueError(f"{name} contains NaN or Inf values")
        work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        flat = x if x.dim() == 2 else x.reshape(-1, self.data_dim)  # no extra autograd node
        return flat.to(work_dtype), x.shape

    def _shape_message(self, name: str, given: tuple[int, ...]) -> str:
        """The error for input of shape ``given`` without the data dimension where the
        layout puts it, with a hint for channel-first input."""
        dim = self.data_dim
        if self.channel_first:
            return f"{name} must have shape (B, {dim}, ...) (channel_first=True), got {given}"
        hint = ""
        if len(given) >= 3 and given[1] == dim:
            hint = (f"; for channel-first input (B, {dim}, ...), such as a convolution's "
                    "output, build the quantizer with channel_first=True")
            if len(given) == 4:
                hint += (", or pass x.permute(0, 2, 3, 1) (channels last) and permute the "
                         "output back with .permute(0, 3, 1, 2)")
        return f"{name} must have shape (..., {dim}), got {given}{hint}"

    def _check_stages(self, num_stages) -> int:
        """The number of codebooks to code with: ``num_stages`` if valid, M if None."""
        if num_stages is None:
            return self.num_stages
        stages = check_int("num_stages", num_stages, 1, self.num_stages)
        if stages < self.num_stages:
            self._refuse_fewer_stages("num_stages", str(self.num_stages), str(stages))
        return stages

    def _refuse_fewer_stages(self, argument: str, expected: str, got: str) -> None:
        """Raise if this quantizer's codes need all M codebooks (``_needs_all_stages``)."""
        if self._needs_all_stages:
            raise invalid(ValueError, argument, f"must be {expected} for "
                                                f"{type(self).__name__}, got {got}: "
                                                f"{self._needs_all_stages}")

    def _check_mask(self, mask, shape: torch.Size) -> torch.Tensor | None:
        """``mask`` as (N,) bool if it has the leading shape of the channel-last input
        ``shape`` (..., D) and lies on the CPU or the codebooks' device; None stays None."""
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool torch.Tensor, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != shape[:-1]:
            raise ValueError(f"mask must have the input's shape without the data dimension, "
                             f"{tuple(shape[:-1])}, got {tuple(mask.shape)}")
        if mask.device not in (CPU, self.codebooks.device):
            raise ValueError(f"mask must be on the CPU or on {self.codebooks.device}, got "
                             f"{mask.device}")
        return mask.reshape(-1)

    def _check_codebooks_trainable(self) -> None:
        """Refuse moving-average codebooks that an optimizer would move as well."""
        if self.codebook_update == "ema" and self.codebooks.requires_grad:
            raise RuntimeError("codebooks require grad, but with codebook_update='ema' the "
                               "moving averages train them; call "
                               "quantizer.codebooks.requires_grad_(False) (e.g. after "
                               "model.requires_grad_(True))")

    def _check_indices(self, indices) -> tuple[torch.Tensor, torch.Size]:
        """Check codes (..., n), or (B, n, ...) with ``channel_first``, and return them as
        (N, n) with their channel-last shape (..., n)."""
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        given = tuple(indices.shape)
        if self.channel_first and indices.dim() > 1:
            indices = indices.movedim(1, -1)  # (B, ..., n)
        layout = "(B, {}, ...)" if self.channel_first else "(..., {})"
        stages = self.num_stages
        if indices.dim() == 0 or not 1 <= indices.shape[-1] <= stages:
            raise ValueError(f"indices must have shape {layout.format('n')} with 1 <= n <= "
                             f"{stages} (one index for each of the first n codebooks), got "
                             f"{given}")
        if indices.shape[-1] < stages:
            self._refuse_fewer_stages("indices", f"of shape {layout.format(stages)}",
                                      str(given))
        entries = self.codebook_size
        if torch.compiler.is_compiling():  # kept in the graph, no host synchronisation
            wide = indices.long()
            torch._assert_async(((wide >= 0) & (wide < entries)).all(),
                                f"indices must be in [0, {entries - 1}]")
        elif indices.numel() and (indices.min() < 0 or indices.max() >= entries):
            raise ValueError(f"indices must be in [0, {entries - 1}], got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return indices.reshape(-1, indices.shape[-1]), indices.shape

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
