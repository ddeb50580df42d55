"""One pass of one or more detectors over a dataset's images, split over distributed ranks."""

import contextlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from anchordetr_trt.errors import check_bool, check_int

from . import distributed
from .annotations import CocoDataset
from .inference import TimedDetector
from .loader import Batch, chunk, iter_batches

R = TypeVar("R")


def dataset_pass(
    dataset: CocoDataset,
    detectors: Sequence[TimedDetector],
    per_batch: Callable[[Batch], list[R]],
    *,
    batch_size: int,
    min_size: int,
    max_size: int,
    num_workers: int,
    progress: bool,
    desc: str,
    skip_bad_images: bool = False,
) -> tuple[list[R], list[float]] | None:
    """``per_batch`` (which calls the detectors) on every batch of ``dataset.image_ids``, under
    ``torch.inference_mode`` with the models in eval mode. Each distributed rank takes every
    world_size-th batch. With ``skip_bad_images``, batches leave unreadable images out (``Batch.skipped``;
    a batch may then hold no image) and ``per_batch`` reports them in its records.

    Returns on rank 0 ``(records of all ranks, seconds in each detector on the slowest rank)``; None on
    other ranks.
    """
    check_int("num_workers", num_workers, 0)
    check_bool("progress", progress)
    batches = chunk(dataset.image_ids, batch_size)
    ranks = distributed.setup(detectors[0].device)

    @torch.inference_mode()
    def run_share(share: list[list[int]]) -> tuple[list[R], list[float]]:
        records: list[R] = []
        loaded = iter_batches(
            dataset,
            share,
            min_size=min_size,
            max_size=max_size,
            num_workers=num_workers,
            skip_bad=skip_bad_images,
        )
        total = sum(map(len, share))
        with contextlib.ExitStack() as stack:
            for detector in detectors:
                stack.enter_context(detector.eval_mode())
            bar = stack.enter_context(
                tqdm(total=total, unit="img", desc=desc, disable=not progress or ranks.rank != 0)
            )
            for batch in loaded:
                records.extend(per_batch(batch))
                bar.update(len(batch.image_ids) + len(batch.skipped))
        return records, [detector.seconds for detector in detectors]

    shares = distributed.run_sharded(run_share, batches, ranks)
    if ranks.rank != 0:
        return None
    records = [record for share_records, _ in shares for record in share_records]
    seconds = [max(share_seconds[i] for _, share_seconds in shares) for i in range(len(detectors))]
    return records, seconds
