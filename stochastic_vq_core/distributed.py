"""Which processes a quantizer's codebook replacement is synchronised over.

A quantizer inside a ``DistributedDataParallel`` model must replace the same codewords
on every rank, or the replicas drift apart; a quantizer trained by one process alone
must not wait for the others. ``process_group`` says which:

- ``"default"``: the default process group when ``torch.distributed`` is initialised
  with more than one process (what DDP uses), else none;
- ``None``: none, every process replaces its own codewords from its own counters;
- a ``torch.distributed.ProcessGroup``: the processes of that group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

DEFAULT_GROUP = "default"


def check_process_group(process_group):
    """``process_group`` if it is one of the three accepted kinds, else a TypeError."""
    if process_group is None or process_group == DEFAULT_GROUP:
        return process_group
    if dist.is_available() and isinstance(process_group, dist.ProcessGroup):
        return process_group
    raise TypeError(f"process_group must be 'default', None or a torch.distributed."
                    f"ProcessGroup, got {type(process_group).__name__}")


class Sync:
    """The processes one replacement is synchronised over (none, when ``size`` is 1)."""

    def __init__(self, process_group):
        self.group = None
        self.size, self.rank = 1, 0
        if process_group is None or not (dist.is_available() and dist.is_initialized()):
            return
        group = dist.group.WORLD if process_group == DEFAULT_GROUP else process_group
        size = dist.get_world_size(group)
        if size > 1:
            self.rank = dist.get_rank(group)
            if self.rank < 0:
                raise ValueError("this process is not a member of the quantizer's "
                                 "process_group")
            self.group, self.size = group, size

    @property
    def leader(self) -> bool:
        """Whether this process decides (rank 0 of the group, or the only one)."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (a copy; the tensor itself when alone)."""
        if self.group is None:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total, group=self.group)
        return total

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Give every process the leader's ``tensor``, in place."""
        if self.group is not None:
            dist.broadcast(tensor, src=dist.get_global_rank(self.group, 0), group=self.group)
