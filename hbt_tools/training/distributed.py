"""Data-parallel helpers: process-group set-up from torchrun's environment, the item slice of
each rank, gathering embeddings with gradient kept on the local rows, and summing gradients.

How the loss is scaled (so that N processes give exactly the 1-process gradient):
every rank gathers all ranks' query and passage embeddings, puts its own (differentiable) rows
back in place of the gathered copies, and computes the *whole* global-batch loss L. Backward on
rank r therefore yields ∂L/∂θ restricted to the paths through rank r's own embeddings; summing
over ranks gives the full ∂L/∂θ. :func:`all_reduce_gradients` sums (it does not average), so
the loss is **not** multiplied by the world size. (With torch's DistributedDataParallel, which
averages, the same result needs ``loss * world_size``; we reduce one flat buffer ourselves, which
also copes with parameters that never get a gradient, such as mBART's unused decoder.)
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistContext:
    """Single process, or the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK
    (nccl on GPUs, gloo on CPUs), on ``device_name`` (see :func:`rank_device`). Also sets a
    sensible CPU thread count per process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device_name, local_rank, world_size)
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    return DistContext(rank, world_size, local_rank, device)


def rank_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """``auto``: this rank's GPU (cuda:LOCAL_RANK) where torch sees one, else the CPU; ``cpu``;
    ``cuda`` = cuda:LOCAL_RANK; ``cuda:N`` in a single process only."""
    from ..io import InputError
    from ..models.encoder import resolve_device

    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None and world_size > 1:
        raise InputError(f"{name!r}: under torchrun each process uses cuda:LOCAL_RANK "
                         "(give cuda or auto)", field="device")
    device = torch.device("cuda", local_rank if device.index is None else device.index)
    torch.cuda.set_device(device)
    return device


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def item_slice(n_items: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a batch's items (shares differ by at most one)."""
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def gather_rows(local: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, list[int]]:
    """Concatenate every rank's rows (rank order); gradient flows only into ``local``'s rows.

    Ranks may hold different row counts: rows are padded to the largest count for the
    collective and trimmed after. Returns the global tensor and the per-rank counts.
    """
    if not ctx.distributed:
        return local, [local.shape[0]]
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = local.detach().new_zeros((max(counts),) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    parts = [g[:n] for g, n in zip(gathered, counts)]
    parts[ctx.rank] = local
    return torch.cat(parts), counts


def all_reduce_gradients(parameters, ctx: DistContext) -> None:
    """Sum gradients over ranks in one flat buffer. Parameters without a gradient (the same
    ones on every rank: unused layers) are left without one, as in a single process."""
    if not ctx.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def all_gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
