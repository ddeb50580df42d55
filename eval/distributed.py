"""An evaluation split over torch.distributed ranks (e.g. launched by torchrun), gathered on every rank."""

import logging
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Ranks(NamedTuple):
    rank: int
    world_size: int


def setup(device: torch.device) -> Ranks:
    """This process's rank. Under torchrun (WORLD_SIZE > 1) with no process group yet, start one (gloo
    for a CPU model, nccl for a CUDA one) and leave it up for later calls; one started by the caller is used as is.
    """
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks(0, 1)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(device.index if device.index is not None else local_rank)
        if torch.cuda.current_device() != local_rank:
            logger.warning(
                "rank with LOCAL_RANK=%d runs its model on cuda:%d: ranks may share a GPU; build the "
                "model on cuda:LOCAL_RANK",
                local_rank,
                torch.cuda.current_device(),
            )
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def run_sharded(work: Callable[[list[T]], R], items: Sequence[T], ranks: Ranks) -> list[R]:
    """``work`` on this rank's share of ``items`` (round robin); returns every rank's result, in rank order.

    A failure on one rank is raised on all of them (on the others as a RuntimeError naming the rank)
    instead of leaving them waiting in the gather.
    """
    mine = list(items[ranks.rank :: ranks.world_size])
    if ranks.world_size == 1:
        return [work(mine)]
    raised, failure, result = None, None, None
    try:
        result = work(mine)
    except Exception as error:
        raised, failure = error, f"{type(error).__name__}: {error}"
    gathered: list[tuple[R | None, str | None]] = [(None, None)] * ranks.world_size
    dist.all_gather_object(gathered, (result, failure))
    if raised is not None:
        raise raised
    for rank, (_, other_failure) in enumerate(gathered):
        if other_failure is not None:
            raise RuntimeError(f"evaluation failed on rank {rank}: {other_failure}")
    return [result for result, _ in gathered]
