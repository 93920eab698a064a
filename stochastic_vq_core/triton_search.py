"""AVQ's beam search as one Triton program per vector, for GPUs (opt-in, experimental).

The same search as ``additive_vq.beam_search_torch``, from the same tables, with the same
floating-point operations in the same order, so that both give the same codes (ties
aside): a program holds its vector's beams (B, t) and their candidates (B, M*K) in
registers, adds up each beam's rows of the cross table, sets the extensions that repeat
a better beam's set to +inf, and picks a step's best B by B rounds of an argmin over the
flattened candidates (ties: the lower beam, then the lower codeword).

It runs where ``STOCHASTIC_VQ_TRITON=1`` is set, Triton is installed and the tensors are
on a CUDA device; on its first search of a configuration (device, M, K, beam, dtype) it
checks its codes against the plain-torch search's on a small random batch (one host
synchronisation) and, where they differ or Triton cannot compile it, warns and leaves
that configuration to the plain-torch search. Its speed on a GPU has not been measured.
``TRITON_INTERPRET=1``, set before triton is imported, runs it on the CPU in Triton's
interpreter (slow; for tests).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the search then never runs
    triton = None

# (device, M, K, beam, dtype) -> whether the codes matched the torch search's
_checked: dict[tuple, bool] = {}


def enabled(device: torch.device) -> bool:
    """Whether AVQ searches with this kernel on ``device`` (see the module's docstring)."""
    if triton is None or os.environ.get("STOCHASTIC_VQ_TRITON", "0") != "1":
        return False
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return device.type == "cuda" or (interpreted and device.type == "cpu")


@torch.compiler.disable
def beam_search(base: torch.Tensor, cross: torch.Tensor, num_stages: int, beam_width: int,
                reference: Callable) -> torch.Tensor | None:
    """Codes (N, M) as ``reference`` (``beam_search_torch``, same arguments) gives them
    from base (N, M*K), finite, and cross (M*K, M*K); None where this configuration failed
    its first-use check on this device (then the caller searches with torch). Run eagerly
    under torch.compile."""
    key = (str(base.device), num_stages, base.shape[1] // num_stages, beam_width, base.dtype)
    if key not in _checked:
        _checked[key] = _agrees(base, cross, num_stages, beam_width, reference)
        if not _checked[key]:
            warnings.warn(f"stochastic_vq: the Triton AVQ search gave other codes than the "
                          f"plain-torch search on {key[0]}; using the plain-torch search",
                          RuntimeWarning, stacklevel=3)
    if not _checked[key]:
        return None
    return _launch(base, cross, num_stages, beam_width)


def _agrees(base: torch.Tensor, cross: torch.Tensor, num_stages: int, beam_width: int,
            reference: Callable) -> bool:
    """Whether the kernel's codes equal the reference's for 64 of these rows, each plus
    random numbers in [0, 1) (rounding leaves no exact ties in random data)."""
    generator = torch.Generator(device=base.device).manual_seed(0)
    rows = torch.randperm(len(base), generator=generator, device=base.device)[:64]
    sample = base.index_select(0, rows) + torch.rand(
        len(rows), base.shape[1], generator=generator, device=base.device, dtype=base.dtype)
    try:
        codes = _launch(sample, cross, num_stages, beam_width)
    except Exception as error:  # a compiler that rejects the kernel: torch searches
        warnings.warn(f"stochastic_vq: the Triton AVQ search failed ({error})",
                      RuntimeWarning, stacklevel=4)
        return False
    return torch.equal(codes, reference(sample, cross, num_stages, beam_width))


def _launch(base: torch.Tensor, cross: torch.Tensor, num_stages: int,
            beam_width: int) -> torch.Tensor:
    rows, total = base.shape
    codes = torch.empty(rows, num_stages, dtype=torch.long, device=base.device)
    if rows:
        padded, beams = triton.next_power_of_2(total), triton.next_power_of_2(beam_width)
        # a program's (beams, padded) candidates spread over more threads as they grow
        warps = 4 if beams * padded <= 4096 else 8 if beams * padded <= 16384 else 16
        _search_kernel[(rows,)](
            base.contiguous(), cross.contiguous(), codes, num_stages, total // num_stages,
            total, padded, beam_width, beams, triton.next_power_of_2(num_stages),
            num_warps=warps)
    return codes


if triton is not None:

    @triton.jit
    def _search_kernel(base_ptr, cross_ptr, codes_ptr, M: tl.constexpr, K: tl.constexpr,
                       MK: tl.constexpr, MKP: tl.constexpr, B: tl.constexpr,
                       BP: tl.constexpr, MP: tl.constexpr):
        n = tl.program_id(0)
        cols = tl.arange(0, MKP)  # (MKP,) codewords; MK ... MKP - 1 are padding
        beams = tl.arange(0, BP)  # (BP,) beams; B ... BP - 1 are padding
        positions = tl.arange(0, MP)  # (MP,) codewords of a beam, in the order chosen
        flat = beams[:, None] * MKP + cols[None, :]  # (BP, MKP) candidate keys
        base = tl.load(base_ptr + n * MK + cols, mask=cols < MK, other=float("inf"))

        # step 0: the B nearest codewords, beam 0 ... B - 1 (+inf errors: no beam)
        values = base
        error = tl.full((BP,), float("inf"), base.dtype)
        path = tl.zeros((BP, MP), tl.int32)  # (BP, MP)
        for k in tl.static_range(B):
            best = tl.min(values, axis=0)
            at = tl.argmin(values, axis=0)
            error = tl.where(beams == k, best, error)
            path = tl.where((beams == k)[:, None] & (positions == 0)[None, :], at, path)
            values = tl.where(cols == at, float("inf"), values)

        for step in tl.static_range(1, M):
            alive = error < float("inf")  # (BP,)
            # the beams' cross sums, their rows added in the order chosen
            sums = tl.zeros((BP, MKP), base.dtype)
            for i in tl.static_range(step):
                row = tl.sum(tl.where(positions == i, path, 0), axis=1)  # (BP,)
                sums += tl.load(cross_ptr + row[:, None] * MK + cols[None, :],
                                mask=alive[:, None] & (cols < MK)[None, :], other=0.0)
            candidate = (base[None, :] + 2.0 * sums) + error[:, None]  # (BP, MKP)
            if step == M - 1:  # the smallest; ties: the smaller codeword, then beam
                at = tl.argmin(tl.min(candidate, axis=0), axis=0)
                column = tl.sum(tl.where(cols[None, :] == at, candidate, 0.0), axis=1)
                parent = tl.argmin(column, axis=0)
                last = tl.sum(tl.where(beams[:, None] == parent, path, 0), axis=0)  # (MP,)
                last = tl.where(positions == step, at, last)
                tl.store(codes_ptr + n * M + last // K, (last % K).to(tl.int64),
                         mask=positions < M)
            else:
                # each set once: beam b extended by the codeword a better beam a holds
                # and b lacks, where a holds all of b's codewords but that one
                held_positions = positions < step
                for a in range(BP):
                    mine = tl.sum(tl.where(beams[:, None] == a, path, 0), axis=0)  # (MP,)
                    same = (path[:, :, None] == mine[None, None, :]) \
                        & held_positions[None, :, None]  # (BP, MP: b's, MP: a's)
                    lacks = (tl.max(same.to(tl.int32), axis=1) == 0) \
                        & held_positions[None, :]  # (BP, MP) a's codewords b lacks
                    lacked = tl.sum(tl.where(lacks, mine[None, :], 0), axis=1)  # (BP,)
                    repeat = (tl.sum(lacks.to(tl.int32), axis=1) == 1) & (beams > a) & alive
                    candidate = tl.where(repeat[:, None] & (cols[None, :] == lacked[:, None]),
                                         float("inf"), candidate)
                # the best B: B rounds of an argmin (ties: the lower key)
                values = tl.reshape(candidate, (BP * MKP,))
                keys = tl.reshape(flat, (BP * MKP,))
                next_error = tl.full((BP,), float("inf"), base.dtype)
                parents = tl.zeros((BP,), tl.int32)
                chosen = tl.zeros((BP,), tl.int32)
                for k in tl.static_range(B):
                    best = tl.min(values, axis=0)
                    at = tl.argmin(values, axis=0)
                    next_error = tl.where(beams == k, best, next_error)
                    parents = tl.where(beams == k, at // MKP, parents)
                    chosen = tl.where(beams == k, at % MKP, chosen)
                    values = tl.where(keys == at, float("inf"), values)
                # the new beams' paths: their parents', and the chosen codeword
                take = parents[:, None] == beams[None, :]  # (BP: new, BP: old)
                path = tl.sum(tl.where(take[:, :, None], path[None, :, :], 0), axis=1)
                path = tl.where(positions[None, :] == step, chosen[:, None], path)
                error = next_error
        if M == 1:  # one codebook: the nearest codeword
            tl.store(codes_ptr + n, tl.argmin(base, axis=0).to(tl.int64))
