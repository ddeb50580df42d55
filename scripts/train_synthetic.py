"""Train AnchorDETR from scratch on the synthetic shapes set, on one GPU, within a wall-clock budget.

The point is a *trained* detector for accuracy checks of the FP16 backends (``scripts.gpu_accuracy``):
random weights give near-equal scores everywhere, so their parity says little. The loop follows the
paper: Hungarian matching (scipy) on focal class cost + L1 + GIoU, sigmoid focal loss, L1 and GIoU box
losses on every decoder layer (auxiliary losses), AdamW, bf16 autocast, gradient clipping, a fixed seed.

Variant: r50-c5. Its weights are the same tensors as r50-dc5's and every op the backends compile is the
same (DC5 only dilates the last ResNet stage); at stride 32 a step should cost about half of DC5's (4x fewer
encoder tokens, an undilated stage 5), so twice the steps fit in the budget, which is what decides
accuracy here. ``--variant r50-dc5`` trains the product default instead.

The ResNet is trained from scratch: the model's FrozenBatchNorm2d (identity statistics) are swapped
for BatchNorm2d while training and the learned statistics written back at the end, so the checkpoint
is a standard AnchorDETR that ``load_model`` loads strictly. The fused Triton ops have no backward:
training runs the PyTorch reference ops. Images are rendered on the fly by worker processes (no disk),
resized like the evaluation's preprocess (long side 512) and padded to 512 x 512.

The budget (default 8 min) counts everything from the script's start: start-up, training, writing the
checkpoint and scoring the val split. The checkpoint stays on the machine (``--ckpt``, default under
.cache/) and is reused when present (``--retrain`` trains again); the training curve (losses every
``--log-every`` steps, val AP during and after training) goes to ``OUT/train.json`` and next to the
checkpoint.

    python -m scripts.train_synthetic --out DIR [--budget-min 8] [--ckpt PATH] [--retrain]
"""

import time

START = time.perf_counter()  # the budget counts imports too

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torchvision.models.resnet import Bottleneck  # noqa: E402
from torchvision.ops import (  # noqa: E402
    FrozenBatchNorm2d,
    box_convert,
    generalized_box_iou,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

import anchordetr_trt as at  # noqa: E402
from anchordetr_trt.config import _ARG_FIELDS, AnchorDETRConfig, variant_name  # noqa: E402
from anchordetr_trt.eval import evaluate_coco, make_synthetic_coco  # noqa: E402
from anchordetr_trt.eval.synthetic import synthetic_image  # noqa: E402
from anchordetr_trt.transforms import IMAGENET_MEAN, IMAGENET_STD, resized_size  # noqa: E402

DEFAULT_CKPT = Path(".cache/train/anchordetr_synthetic.pth")
VAL_PROBE = 128  # val images scored during training


@dataclass(frozen=True)
class Recipe:
    """The data: image and object sizes, seeds of the two splits, and the model's input size."""

    min_size: int = 320  # original images: each side in [min_size, max_size]
    max_size: int = 640
    max_objects: int = 10
    input_size: int = 512  # preprocess(min_size=input_size, max_size=input_size): long side 512
    train_seed: int = 0
    val_seed: int = 1
    val_images: int = 512

    def val_split(self, root: Path) -> tuple[Path, Path]:
        """The val split written under ``root`` (once: the files depend only on the recipe)."""
        folder = root / f"val_seed{self.val_seed}_{self.val_images}_{self.min_size}-{self.max_size}"
        ann_file, image_dir = folder / "annotations.json", folder / "images"
        if not ann_file.is_file():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            make_synthetic_coco(
                partial,
                num_images=self.val_images,
                seed=self.val_seed,
                min_size=self.min_size,
                max_size=self.max_size,
                max_objects=self.max_objects,
                mixed_formats=False,
            )
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)  # whole or absent: an interrupted run leaves no half-written split
        return ann_file, image_dir


# --- data ------------------------------------------------------------------------------------------------


class ShapesDataset(torch.utils.data.Dataset):
    """Training image ``i`` of the recipe's train seed, resized as by ``preprocess``: uint8 [h, w, 3]
    and its target: ``labels`` [n] (category ids) and ``boxes`` [n, 4] (cx, cy, w, h in [0, 1]).

    Items and batches are numpy arrays: worker processes send them through a pipe, whereas tensors
    would go through /dev/shm, which containers often keep too small for batches in flight."""

    def __init__(self, recipe: Recipe, length: int = 10**9):
        self.recipe, self.length = recipe, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        r = self.recipe
        pixels, objects = synthetic_image(
            r.train_seed, index, min_size=r.min_size, max_size=r.max_size, max_objects=r.max_objects
        )
        height, width = pixels.shape[:2]
        new_h, new_w = resized_size(height, width, r.input_size, r.input_size)
        image = Image.fromarray(pixels).resize((new_w, new_h), Image.BILINEAR)  # as preprocess does
        boxes = torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32).reshape(-1, 4)
        boxes = box_convert(boxes, "xywh", "cxcywh") / torch.tensor([width, height, width, height])
        labels = np.array([obj["category_id"] for obj in objects], dtype=np.int64)
        return np.asarray(image), {"labels": labels, "boxes": boxes.numpy()}


def collate(size: int):
    """Batch of uint8 images [B, size, size, 3] padded at the bottom and right, the padding mask
    [B, size, size] (True = padding) and the targets."""

    def fn(items: Sequence[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        images = np.zeros((len(items), size, size, 3), dtype=np.uint8)
        mask = np.ones((len(items), size, size), dtype=bool)
        for i, (image, _) in enumerate(items):
            h, w = image.shape[:2]
            images[i, :h, :w] = image
            mask[i, :h, :w] = False
        return images, mask, [target for _, target in items]

    return fn


def to_device(
    batch: tuple[np.ndarray, np.ndarray, list[dict]], device: torch.device
) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """A collated batch as model inputs: images [B, 3, H, W] float, normalized as ``preprocess`` does
    (zero on padding) and channels-last, mask [B, H, W] bool, targets as tensors, all on ``device``."""
    images, mask, targets = batch
    mask = torch.from_numpy(mask).to(device)
    images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)  # uint8 over the wire: 4x less
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    images = ((images.float() / 255 - mean) / std).masked_fill(mask[:, None], 0.0)
    images = images.contiguous(memory_format=torch.channels_last)  # the masked fill gives NCHW
    targets = [{k: torch.from_numpy(v).to(device) for k, v in t.items()} for t in targets]
    return images, mask, targets


# --- losses ----------------------------------------------------------------------------------------------


def _focal_class_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """[..., Q, C] logits, [T] labels -> [..., Q, T]: the focal loss of calling query q class labels[t]
    minus that of calling it background (Deformable DETR's matching cost)."""
    prob = logits.float().sigmoid()[..., labels]
    positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    return positive - negative


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimizing ``class * focal cost + bbox * L1 + giou *
    (-GIoU)``, per image and decoder layer (scipy's linear_sum_assignment)."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: Sequence[dict]) -> list[list[tuple]]:
        """logits [L, B, Q, C], boxes [L, B, Q, 4] cxcywh -> per layer, per image, (query indices,
        target indices) as int64 tensors."""
        from scipy.optimize import linear_sum_assignment

        layers, batch, queries = logits.shape[:3]
        labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        if len(labels) == 0:
            empty = (torch.zeros(0, dtype=torch.int64),) * 2
            return [[empty] * batch for _ in range(layers)]
        # Costs against every target of the batch, then each image's own columns gathered: one copy to the CPU.
        pred = boxes.float().flatten(0, 2)
        cost = (
            self.cost_bbox * torch.cdist(pred, tgt_boxes, p=1)
            - self.cost_giou
            * generalized_box_iou(
                box_convert(pred, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        ).view(layers, batch, queries, -1)
        cost = cost + self.cost_class * _focal_class_cost(logits, labels)
        sizes = [len(t["labels"]) for t in targets]
        offsets = np.cumsum([0, *sizes[:-1]])
        last = len(labels) - 1  # an image without targets reads some column and uses none
        columns = torch.tensor(
            [
                [min(o + min(j, max(n - 1, 0)), last) for j in range(max(sizes))]
                for o, n in zip(offsets, sizes, strict=True)
            ],
            device=cost.device,
        )
        blocks = cost.gather(-1, columns[None, :, None].expand(layers, -1, queries, -1))
        blocks = blocks.nan_to_num(1e9, 1e9, -1e9).cpu().numpy()  # scipy rejects NaN: the loss reports it
        matches = []
        for layer in blocks:
            per_image = []
            for block, n in zip(layer, sizes, strict=True):
                rows, cols = linear_sum_assignment(block[:, :n])
                per_image.append(
                    (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
                )
            matches.append(per_image)
        return matches


class SetCriterion(nn.Module):
    """DETR's set loss with focal classification: per decoder layer, ``class * focal + bbox * L1 +
    giou * (1 - GIoU)`` over the matched pairs, each normalized by the number of target boxes."""

    def __init__(
        self,
        matcher: HungarianMatcher,
        *,
        weight_class: float = 2.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        self.matcher = matcher
        self.weights = {"class": weight_class, "bbox": weight_bbox, "giou": weight_giou}
        self.alpha, self.gamma = alpha, gamma

    def forward(self, outputs: dict, targets: Sequence[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        """``outputs`` of ``model(..., aux=True)`` (or without aux) -> (weighted total, unweighted
        parts summed over layers: ``class``, ``bbox``, ``giou``)."""
        layers = [*outputs.get("aux_outputs", []), outputs]
        logits = torch.stack([out["pred_logits"] for out in layers]).float()
        boxes = torch.stack([out["pred_boxes"] for out in layers]).float()
        matches = self.matcher(logits, boxes, targets)
        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
        tgt_labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        parts = dict.fromkeys(self.weights, logits.new_zeros(()))
        for layer, per_image in enumerate(matches):
            image_index = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(per_image)]).to(
                logits.device
            )
            query_index = torch.cat([q for q, _ in per_image]).to(logits.device)
            offsets = np.cumsum([0, *(len(t["labels"]) for t in targets[:-1])])
            target_index = torch.cat([t + int(o) for (_, t), o in zip(per_image, offsets, strict=True)]).to(
                logits.device
            )
            onehot = torch.zeros_like(logits[layer])
            onehot[image_index, query_index, tgt_labels[target_index]] = 1
            focal = sigmoid_focal_loss(
                logits[layer], onehot, alpha=self.alpha, gamma=self.gamma, reduction="sum"
            )
            matched = boxes[layer][image_index, query_index]
            target = tgt_boxes[target_index]
            parts["class"] = parts["class"] + focal / num_boxes
            parts["bbox"] = parts["bbox"] + F.l1_loss(matched, target, reduction="sum") / num_boxes
            giou = generalized_box_iou_loss(
                box_convert(matched, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"), reduction="sum"
            )
            parts["giou"] = parts["giou"] + giou / num_boxes
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts


# --- batch norm: trainable while training, frozen in the checkpoint --------------------------------------


def _swap_norms(model: nn.Module, kind: type, make) -> nn.Module:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))
    return model


@torch.no_grad()
def trainable_batchnorm(model: nn.Module) -> nn.Module:
    """Every FrozenBatchNorm2d becomes a BatchNorm2d with the same affine parameters and statistics."""

    def make(frozen: FrozenBatchNorm2d) -> nn.BatchNorm2d:
        norm = nn.BatchNorm2d(frozen.weight.numel(), eps=frozen.eps).to(frozen.weight.device)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, key).copy_(getattr(frozen, key))
        return norm

    return _swap_norms(model, FrozenBatchNorm2d, make)


@torch.no_grad()
def frozen_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d becomes a FrozenBatchNorm2d holding its learned affine parameters and running
    statistics: the same function as the BatchNorm2d in eval mode."""

    def make(norm: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps).to(norm.weight.device)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, key).copy_(getattr(norm, key).detach().float())
        return frozen

    return _swap_norms(model, nn.BatchNorm2d, make)


@torch.no_grad()
def init_for_training(model: at.AnchorDETR) -> at.AnchorDETR:
    """Initialization for training from scratch, as the official code does for the transformer (Xavier
    weights, anchor points uniform in the image, a 1% class prior, zero box offsets) plus zero-init of
    each residual branch's last norm, which lets a deep ResNet start as a shallow one."""
    transformer = model.transformer
    for param in transformer.parameters():
        if param.dim() > 1:
            nn.init.xavier_uniform_(param)
    nn.init.uniform_(transformer.position.weight, 0, 1)
    class_embed, bbox_embed = transformer.class_embed[0], transformer.bbox_embed[0]
    nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
    nn.init.zeros_(bbox_embed.layers[-1].weight)
    nn.init.zeros_(bbox_embed.layers[-1].bias)
    proj = model.input_proj[0][0]
    nn.init.xavier_uniform_(proj.weight)
    nn.init.zeros_(proj.bias)
    for block in model.backbone.modules():
        if isinstance(block, Bottleneck):
            nn.init.zeros_(block.bn3.weight)
    return model


# --- checkpoint ------------------------------------------------------------------------------------------


def checkpoint_args(config: AnchorDETRConfig, **extra) -> dict:
    """The ``args`` that ``load_model`` reads back as ``config`` (the inverse of config_from_args), and
    ``extra`` training facts."""
    args = {arg: getattr(config, field) for arg, field in _ARG_FIELDS.items()}
    return {**args, "num_feature_levels": 1, "attention_type": "RCDA", "spatial_prior": "learned", **extra}


def save_checkpoint(model: at.AnchorDETR, path: Path, **extra) -> Path:
    """Write ``{"model": state_dict, "args": ...}`` (frozen batch norms) atomically to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    torch.save({"model": state_dict, "args": checkpoint_args(model.config, **extra)}, partial)
    partial.replace(path)
    return path


# --- training --------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """Linear warm-up, then cosine decay to ``floor * lr``, over the training progress in [0, 1]."""

    warmup: float = 0.05
    floor: float = 0.05

    def factor(self, progress: float) -> float:
        if progress < self.warmup:
            return (progress + 1e-3) / (self.warmup + 1e-3)
        t = min((progress - self.warmup) / (1 - self.warmup), 1.0)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def train_step(
    model: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    mask: Tensor,
    targets: Sequence[dict],
    *,
    autocast_dtype: torch.dtype | None,
    clip_norm: float,
) -> tuple[Tensor, dict[str, Tensor], bool]:
    """One optimization step. Returns the loss, its parts and whether the step was taken (a step
    with a NaN or infinite loss is skipped)."""
    with torch.autocast(
        images.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        outputs = model(images, mask, aux=True)
    loss, parts = criterion(outputs, targets)
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return loss.detach(), {k: v.detach() for k, v in parts.items()}, False
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, True


def build_for_training(config: AnchorDETRConfig, device: torch.device, seed: int) -> at.AnchorDETR:
    torch.manual_seed(seed)
    model = init_for_training(trainable_batchnorm(at.build_model(config)))
    model.set_fused_ops(False)  # the Triton kernels have no backward
    model.to(device).train()
    if device.type == "cuda":
        model.backbone.to(memory_format=torch.channels_last)
    return model


def train(
    config: AnchorDETRConfig,
    recipe: Recipe,
    *,
    device: torch.device,
    deadline: float,
    max_steps: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-4,
    backbone_lr: float = 4e-4,
    weight_decay: float = 1e-4,
    clip_norm: float = 0.1,
    seed: int = 0,
    workers: int = 8,
    log_every: int = 50,
    val: Callable[[], tuple[Path, Path] | None] = lambda: None,
    val_every_s: float = 0.0,
    log=print,
) -> tuple[at.AnchorDETR, dict]:
    """Train until ``deadline`` (a time.perf_counter() value) or ``max_steps``; the learning rate
    follows ``Schedule`` over whichever of the two is nearer. Returns the model with frozen batch norms
    (eval mode) and the curve: ``log`` entries of mean losses every ``log_every`` steps, and
    ``val_probes``: AP on the first VAL_PROBE val images every ``val_every_s`` once ``val()`` gives the split."""
    model = build_for_training(config, device, seed)
    criterion = SetCriterion(HungarianMatcher())
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": rest, "lr": lr}, {"params": backbone, "lr": backbone_lr}]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    schedule = Schedule()
    loader = torch.utils.data.DataLoader(
        ShapesDataset(recipe),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate(recipe.input_size),
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    curve = {"log": [], "val_probes": [], "skipped_steps": 0}
    start = time.perf_counter()
    next_val = start + val_every_s if val_every_s > 0 else math.inf
    window: dict[str, list[Tensor]] = {}
    step = 0
    for batch in loader:
        images, mask, targets = to_device(batch, device)
        now = time.perf_counter()
        progress = (now - start) / max(deadline - start, 1e-9)
        if max_steps is not None:
            progress = max(progress, step / max_steps)
        if progress >= 1:
            break
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * schedule.factor(progress)
        loss, parts, taken = train_step(
            model,
            criterion,
            optimizer,
            images,
            mask,
            targets,
            autocast_dtype=autocast_dtype,
            clip_norm=clip_norm,
        )
        step += 1
        curve["skipped_steps"] += not taken
        for name, value in {"loss": loss, **parts}.items():
            window.setdefault(name, []).append(value)
        if step % log_every == 0:
            means = {name: torch.stack(values).mean().item() for name, values in window.items()}
            window.clear()
            entry = {
                "step": step,
                "time_s": round(time.perf_counter() - start, 1),
                "lr": optimizer.param_groups[0]["lr"],
                **means,
            }
            curve["log"].append(entry)
            log(
                f"step {step} {entry['time_s']:.0f}s loss {means['loss']:.3f} (class {means['class']:.3f} "
                f"l1 {means['bbox']:.3f} giou {means['giou']:.3f}) lr {entry['lr']:.2e}"
            )
        if time.perf_counter() >= next_val and (paths := val()) is not None:
            stats = evaluate_coco(model, *paths, **val_settings(recipe, batch_size, max_images=VAL_PROBE))
            elapsed = round(time.perf_counter() - start, 1)
            curve["val_probes"].append(
                {"step": step, "time_s": elapsed, "AP": stats["AP"], "AP50": stats["AP50"]}
            )
            log(f"val ({VAL_PROBE} images) at step {step}: AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f}")
            next_val = time.perf_counter() + val_every_s
    curve["steps"] = step
    curve["train_s"] = round(time.perf_counter() - start, 1)
    curve["images_per_s"] = round(step * batch_size / max(curve["train_s"], 1e-9), 1)
    return frozen_batchnorm(model).eval(), curve


def val_settings(recipe: Recipe, batch_size: int, **extra) -> dict:
    """evaluate_coco / parity_report keywords for the recipe's val split."""
    return {
        "batch_size": batch_size,
        "min_size": recipe.input_size,
        "max_size": recipe.input_size,
        "num_workers": 8,
        "progress": False,
        **extra,
    }


def git_commit() -> str | None:
    """$GIT_COMMIT if set (a copied tree may carry a stale .git: it did on the GPU machine), else the
    work tree's commit, else None."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for train.json (the training curve)")
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="checkpoint path (kept, reused)")
    parser.add_argument("--retrain", action="store_true", help="train even if --ckpt exists")
    parser.add_argument("--variant", default="r50-c5", choices=sorted(at.VARIANTS))
    parser.add_argument(
        "--budget-min", type=float, default=8.0, help="wall-clock minutes, everything included"
    )
    parser.add_argument(
        "--reserve-s", type=float, default=45.0, help="of the budget, kept for saving and val"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--backbone-lr", type=float, default=4e-4, help="higher: the ResNet starts from scratch"
    )
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 3)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--val-every-s", type=float, default=150.0, help="val AP on 128 images every N s (0: off)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N steps (CPU smoke runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".cache/train"), help="where the val split is written"
    )
    defaults = Recipe()
    parser.add_argument(
        "--input-size", type=int, default=defaults.input_size, help="long side fed to the model"
    )
    parser.add_argument(
        "--min-size", type=int, default=defaults.min_size, help="original image sides: at least"
    )
    parser.add_argument(
        "--max-size", type=int, default=defaults.max_size, help="original image sides: at most"
    )
    parser.add_argument("--val-images", type=int, default=defaults.val_images)
    args = parser.parse_args(argv)
    if args.budget_min <= 0 or args.batch_size < 1 or args.reserve_s < 0 or args.val_images < 1:
        parser.error("--budget-min, --batch-size and --val-images must be positive and --reserve-s >= 0")
    if not 16 <= args.min_size <= args.max_size or args.input_size < 64:
        parser.error("image sizes need 16 <= --min-size <= --max-size and --input-size >= 64")
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        print(
            "train_synthetic: scipy is missing: pip install 'anchordetr_trt[train]' (or a scipy wheel)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve_path = args.ckpt.with_suffix(".json")
    if args.ckpt.is_file() and curve_path.is_file() and not args.retrain:
        at.load_model(args.ckpt)  # still loads strictly
        shutil.copyfile(curve_path, out / "train.json")
        print(
            f"reusing {args.ckpt} (trained before; --retrain to train again); curve in {out / 'train.json'}"
        )
        return 0

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    recipe = Recipe(
        min_size=args.min_size, max_size=args.max_size, input_size=args.input_size, val_images=args.val_images
    )
    config = at.VARIANTS[args.variant]
    deadline = START + args.budget_min * 60 - args.reserve_s
    with ProcessPoolExecutor(1) as pool:  # the val split is written while the GPU trains
        val_job = pool.submit(recipe.val_split, args.data_dir)
        model, curve = train(
            config,
            recipe,
            device=device,
            deadline=deadline,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            backbone_lr=args.backbone_lr,
            seed=args.seed,
            workers=args.workers,
            log_every=args.log_every,
            val=lambda: val_job.result() if val_job.done() else None,
            val_every_s=args.val_every_s,
        )
        val = val_job.result()
    train_minutes = (time.perf_counter() - START) / 60
    save_checkpoint(
        model,
        args.ckpt,
        dataset="anchordetr_trt synthetic shapes",
        seed=args.seed,
        steps=curve["steps"],
        batch_size=args.batch_size,
        train_minutes=round(train_minutes, 2),
    )
    # The strict loader (the checkpoint is usable) and the reference computation: plain PyTorch ops in
    # fp32 without TF32, as gpu_accuracy's reference.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    trained = at.load_model(args.ckpt, device=device).set_fused_ops(False)
    stats = evaluate_coco(trained, *val, **val_settings(recipe, args.batch_size))
    summary = {
        "variant": variant_name(config),
        "ckpt": str(args.ckpt),
        "val_ann_file": str(val[0]),
        "commit": git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "recipe": recipe.__dict__,
        "data_dir": str(args.data_dir),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "ckpt", "data_dir", "device")},
        "train_minutes": round(train_minutes, 2),
        "total_minutes": round((time.perf_counter() - START) / 60, 2),
        "val": {k: v for k, v in stats.items() if k != "timing"},
        **curve,
    }
    text = json.dumps(summary, indent=1, default=str)
    curve_path.write_text(text)
    (out / "train.json").write_text(text)
    print(
        f"trained {summary['variant']} for {curve['steps']} steps in {summary['train_minutes']:.1f} min "
        f"({curve['images_per_s']:.0f} img/s); val AP {stats['AP']:.3f} AP50 {stats['AP50']:.3f}; "
        f"total {summary['total_minutes']:.1f} min; checkpoint {args.ckpt}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
