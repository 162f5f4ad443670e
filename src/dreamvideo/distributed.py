"""Several processes (``accelerate launch`` / ``torchrun``): who is who, gradient averaging, work sharding.

Every function is a cheap no-op in a single process, so the training and generation code has one path.
With ``WORLD_SIZE > 1`` in the environment the first call sets up ``accelerate.PartialState`` (process group:
NCCL on GPUs, gloo on CPUs). Only the adapters train while the UNet stays frozen, so instead of wrapping the
UNet in ``DistributedDataParallel`` we average the trainable gradients after ``backward()``: DDP's update.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

_alone = 0  # depth of nested local_only() blocks


def world_size() -> int:
    """Number of processes of this run (1 unless launched by ``accelerate launch`` / ``torchrun``, or alone)."""
    return 1 if _alone else int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside the block this process works alone, as a single-process run would (rank 0, no collectives).

    For independent jobs split with :func:`shard`: each process trains its own subjects and motions.
    """
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def _state() -> Any:
    from accelerate import PartialState

    use_cpu = (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    )
    return PartialState(cpu=use_cpu)  # a singleton: initialises the process group on first use


def _collective_device() -> torch.device:
    """Where small tensors for a collective live: the process's GPU under NCCL (GPU tensors only), else the CPU."""
    s = _state()
    return s.device if s.device.type == "cuda" else torch.device("cpu")


def process_index() -> int:
    return _state().process_index if world_size() > 1 else 0


def is_main_process() -> bool:
    return process_index() == 0


def wait_for_everyone() -> None:
    """A barrier across processes (nothing in a single process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def local_device(name: str | None) -> torch.device:
    """The device of this process: ``name`` or the default, with each process on its own GPU (``LOCAL_RANK``).

    Args:
        name: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``None`` (cuda if available).
    """
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def mean_loss(loss: torch.Tensor) -> float:
    """The loss averaged over processes, as a float (``loss.item()`` in a single process)."""
    if world_size() == 1:
        return loss.item()
    value = loss.detach().float().reshape(1).clone()
    _state()
    torch.distributed.all_reduce(value)
    return value.item() / world_size()


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over processes (one all-reduce per dtype and device).

    A parameter without a gradient counts as a zero gradient, so every process reduces the same tensors.
    """
    if world_size() == 1:
        return
    _state()
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def broadcast_parameters(params: Sequence[nn.Parameter]) -> None:
    """Copy the main process's values of ``params`` to every process (identical starting points)."""
    if world_size() == 1:
        return
    _state()
    for p in params:
        torch.distributed.broadcast(p.data, src=0)


def gather_generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every process's CPU generator state, in process order (``[own state]`` in a single process)."""
    state = generator.get_state()
    if world_size() == 1:
        return [state]
    device = _collective_device()
    states = [torch.empty_like(state, device=device) for _ in range(world_size())]
    torch.distributed.all_gather(states, state.to(device))
    return [t.cpu() for t in states]


def same_everywhere(value: str) -> bool:
    """Whether every process passed the same ``value`` (always true in a single process)."""
    if world_size() == 1:
        return True
    device = _collective_device()
    mine = torch.tensor(list(hashlib.sha256(value.encode()).digest()[:8]), dtype=torch.uint8, device=device)
    every = [torch.empty_like(mine) for _ in range(world_size())]
    torch.distributed.all_gather(every, mine)
    return all(torch.equal(t, mine) for t in every)


def sum_counts(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` summed over processes key by key (every process passes the same keys; a copy in a single process)."""
    if world_size() == 1:
        return dict(counts)
    device = _collective_device()
    keys = sorted(counts)
    values = torch.tensor([counts[k] for k in keys], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))


def shard(items: Sequence[Any]) -> list[Any]:
    """This process's contiguous share of ``items`` (all of them in a single process).

    Args:
        items: work to split, e.g. ``list(enumerate(prompts))`` to keep each item's global index.
    """
    if world_size() == 1:
        return list(items)
    with _state().split_between_processes(list(items)) as part:
        return list(part)
