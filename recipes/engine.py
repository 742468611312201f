"""The training and evaluation engine: one CPU, one GPU, or many through ``torchrun`` (DDP).

Determinism and exact resume: the sample order of every epoch is a permutation
drawn from ``(seed, epoch)``, every sample's augmentation is drawn from
``(seed, epoch, index)``, and checkpoints hold the model, optimiser, scheduler,
iteration and RNG states; a resumed run therefore continues with exactly the
batches, augmentations and dropout masks the uninterrupted run would have used.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

import zoo

from .datasets import collate_samples

__all__ = ["train", "evaluate", "DistributedContext", "EpochBatchSampler", "build_optimizer",
           "build_scheduler", "save_checkpoint", "load_checkpoint"]

log = logging.getLogger("recipes")


# ------------------------------------------------------------------ distributed

class DistributedContext:
    """Rank, world size and device; initialises the process group under ``torchrun``."""

    def __init__(self, device: Optional[str] = None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def close(self):
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------ data order

class EpochBatchSampler(Sampler[List[tuple]]):
    """Batches of ``(index, epoch)`` for one rank, resumable at any batch.

    Each epoch is a permutation of the dataset drawn from ``(seed, epoch)``, cut
    to a multiple of ``world_size * batch_size`` and dealt out to the ranks.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        per_step = batch_size * world_size
        if size < per_step:
            raise ValueError(f"the training set has {size} samples, fewer than one step needs "
                             f"({batch_size} per rank x {world_size} ranks)")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // per_step
        self.start_iteration = 0

    def __len__(self) -> int:
        return 1 << 62  # endless; the engine stops at its iteration budget

    def batch(self, iteration: int) -> List[tuple]:
        epoch, step = divmod(iteration, self.batches_per_epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        first = (step * self.world_size + self.rank) * self.batch_size
        return [(int(i), epoch) for i in order[first:first + self.batch_size]]

    def __iter__(self) -> Iterator[List[tuple]]:
        iteration = self.start_iteration
        while True:
            yield self.batch(iteration)
            iteration += 1


class SeededAugmentation(Dataset):
    """Applies ``transform`` to ``base[index]`` with RNGs seeded from ``(seed, epoch, index)``."""

    def __init__(self, base: Dataset, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, epoch = key
        sample = self.base[index]
        seed = (self.seed * 1_000_003 + epoch * 10_007 + index) % (2 ** 31)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                return self.transform(sample)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


# ------------------------------------------------------------------ optimisation

def build_optimizer(model: nn.Module, optim: Dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW; the backbone's LR times ``backbone_lr_mult``; no weight decay on the query/level embeddings."""
    groups: Dict[tuple, List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = optim["backbone_lr_mult"] if name.startswith("backbone.") else 1.0
        decay = 0.0 if any(key in name for key in optim.get("no_decay", ())) else optim["weight_decay"]
        groups.setdefault((lr_mult, decay), []).append(param)
    param_groups = [{"params": params, "lr": optim["lr"] * lr_mult, "weight_decay": decay}
                    for (lr_mult, decay), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=optim["lr"], betas=tuple(optim["betas"]))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Dict[str, Any], iters: int):
    """Linear warm-up from 1e-6 x LR, then poly decay to 0 over ``poly_iters`` (default: the run)."""
    warmup = optim.get("warmup_iters", 0) or 0
    total = optim.get("poly_iters") or iters
    power = optim.get("poly_power", 1.0)

    def factor(it: int) -> float:
        poly = max(0.0, 1.0 - it / total) ** power
        if it < warmup:
            return poly * (1e-6 + (1.0 - 1e-6) * it / warmup)
        return poly

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------ checkpoints

def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, iteration: int, best: Dict[str, Any],
                    recipe: Dict[str, Any]) -> None:
    _atomic_torch_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "iteration": iteration, "best": best, "recipe": recipe,
        "rng": _rng_state(),
    }, path)


def _rng_state() -> Dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A training checkpoint written by :func:`save_checkpoint`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}); "
                         "it may be truncated: resume from the previous one") from err


def _restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ building blocks from a recipe

def build_model(recipe: Dict[str, Any]) -> nn.Module:
    model_cfg = recipe["model"]
    model = zoo.create(model_cfg["name"], **model_cfg.get("kwargs", {}))
    if model_cfg.get("init_checkpoint"):
        from zoo.factory import load_weights
        from zoo.hub import read_checkpoint
        path = model_cfg["init_checkpoint"]
        load_weights(model, model_cfg["name"], read_checkpoint(path), source=str(path))
    return model


def build_datasets(recipe: Dict[str, Any], model: nn.Module, skip_bad: bool = False):
    from . import datasets, transforms
    data = recipe["data"]
    mean, std = model.pretrained_cfg.mean, model.pretrained_cfg.std
    train_tf = transforms.train_transforms(data["crop_size"], data["scales"], data["max_long_side"], mean, std,
                                           cat_max_ratio=data.get("cat_max_ratio", 0.75))
    eval_tf = transforms.eval_transforms(data.get("eval_scale"), mean, std)
    train_set = datasets.build_dataset(data["dataset"], data["root"], data["train_split"], skip_bad=skip_bad)
    val_set = datasets.build_dataset(data["dataset"], data["root"], data["val_split"], skip_bad=skip_bad)
    return train_set, train_tf, val_set, eval_tf


def build_criterion(recipe: Dict[str, Any], num_classes: int):
    from . import losses, matcher
    loss = recipe["loss"]
    if loss["type"] == "per_pixel":
        return losses.PerPixelCrossEntropy()
    if loss["type"] != "mask_classification":
        raise ValueError(f"unknown loss type {loss['type']!r}: 'mask_classification' or 'per_pixel'")
    match = matcher.HungarianMatcher(cost_class=loss["class_weight"], cost_focal=loss["focal_weight"],
                                     cost_dice=loss["dice_weight"])
    return losses.SetCriterion(num_classes, match, no_object_weight=loss["no_object_weight"],
                               class_weight=loss["class_weight"], focal_weight=loss["focal_weight"],
                               dice_weight=loss["dice_weight"])


def _targets(batch: Dict[str, Any], device):
    """Semantic label maps as they are (the criterion builds one mask per class and ignores 255);
    panoptic samples as per-segment (labels, masks, valid pixels)."""
    labels = batch["label"].to(device, non_blocking=True)
    if "masks" not in batch:
        return labels
    return [(cls.to(device), masks.to(device), label != 255)
            for cls, masks, label in zip(batch["labels"], batch["masks"], labels)]


def compute_loss(model: nn.Module, criterion, batch: Dict[str, Any], device) -> Dict[str, torch.Tensor]:
    images = batch["image"].to(device, non_blocking=True)
    outputs = model(images)
    if isinstance(outputs, dict):
        return criterion(outputs, _targets(batch, device))
    return {"loss": criterion(outputs, batch["label"].to(device, non_blocking=True))}


# ------------------------------------------------------------------ evaluation

@torch.no_grad()
def evaluate(model: nn.Module, val_set: Dataset, eval_tf, ctx: DistributedContext, limit: Optional[int] = None,
             progress: bool = True) -> Dict[str, Any]:
    """Semantic metrics (mIoU, mAcc, aAcc) or panoptic quality over the validation set, whole images.

    Ranks evaluate disjoint shards and the metric states are summed across ranks.
    """
    from tqdm import tqdm
    from .metrics import PanopticQuality, SemanticMetrics
    net = model.module if hasattr(model, "module") else model
    cfg = net.pretrained_cfg
    net.eval()
    panoptic = getattr(net, "task", "semantic") == "panoptic"
    metric = (PanopticQuality(net.thing_classes) if panoptic else SemanticMetrics(cfg.num_classes))
    indices = list(range(len(val_set)))[: limit or None][ctx.rank::ctx.world_size]
    for index in tqdm(indices, desc="eval", disable=not (progress and ctx.is_main), leave=False):
        sample = eval_tf(val_set[index])
        images = sample["image"].unsqueeze(0).to(ctx.device)
        if panoptic:
            segment_ids, segments = net.predict(images)[0]
            metric.update(segment_ids.cpu(), segments, sample["segment_ids"], sample["segments_info"])
        else:
            pred = net.predict(images)
            label = sample["label"].unsqueeze(0)
            if pred.shape[-2:] != label.shape[-2:]:
                pred = torch.nn.functional.interpolate(pred[:, None].float(), size=label.shape[-2:],
                                                       mode="nearest")[:, 0].long()
            metric.update(pred.cpu(), label)
    metric.reduce()
    return metric.compute()


# ------------------------------------------------------------------ training

def train(recipe: Dict[str, Any], out_dir: Path, resume: Optional[str] = None, skip_bad: bool = False,
          device: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Train ``recipe``; writes ``config.json``, ``log.csv``, TensorBoard events and checkpoints to ``out_dir``.

    ``resume``: a checkpoint path, or ``"auto"`` for ``out_dir/last.pth``. Returns the final metrics.
    """
    from tqdm import tqdm
    ctx = DistributedContext(device)
    out_dir = Path(out_dir)
    train_cfg, optim = recipe["train"], recipe["optim"]
    seed = int(train_cfg["seed"])
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

    model = build_model(recipe).to(ctx.device)
    train_set, train_tf, val_set, eval_tf = build_datasets(recipe, model, skip_bad)
    criterion = build_criterion(recipe, model.pretrained_cfg.num_classes)
    optimizer = build_optimizer(model, optim)
    iters = int(train_cfg["iters"])
    scheduler = build_scheduler(optimizer, optim, iters)
    start, best, rng_state = 0, {"metric": None, "iteration": None}, None

    if resume:
        path = out_dir / "last.pth" if resume == "auto" else Path(resume)
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, rng_state = state["iteration"], state["best"], state["rng"]
        if ctx.is_main:
            log.info("resumed from %s at iteration %d", path, start)
    if start >= iters:
        raise ValueError(f"nothing to train: the run is at iteration {start} of {iters}; "
                         "raise train.iters to continue")

    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(recipe, indent=2, default=list))
    net = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    batch_size = int(recipe["data"]["batch_size"])
    sampler = EpochBatchSampler(len(train_set), batch_size, seed, ctx.rank, ctx.world_size)
    sampler.start_iteration = start
    loader = DataLoader(SeededAugmentation(train_set, train_tf, seed), batch_sampler=sampler,
                        num_workers=int(recipe["data"].get("num_workers", 0)), collate_fn=collate_samples,
                        persistent_workers=False, pin_memory=ctx.device.type == "cuda")
    amp = bool(train_cfg.get("amp")) and ctx.device.type == "cuda"
    writer, log_file, log_writer = None, None, None
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tensorboard"))
        new_log = not (out_dir / "log.csv").exists()
        log_file = open(out_dir / "log.csv", "a", newline="")
        log_writer = csv.writer(log_file)
        if new_log:
            log_writer.writerow(["iteration", "loss", "lr", "seconds_per_iter", "details"])

    metrics: Dict[str, Any] = {}
    bar = tqdm(total=iters, initial=start, desc="train", disable=not (progress and ctx.is_main), dynamic_ncols=True)
    data_iter = iter(loader)  # draws the workers' base seed from the global RNG ...
    if rng_state is not None:
        _restore_rng(rng_state)  # ... so restore after it, as the uninterrupted run had it here
    tick = time.perf_counter()
    try:
        for iteration in range(start, iters):
            batch = next(data_iter)
            net.train()
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
                losses = compute_loss(net, criterion, batch, ctx.device)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {iteration}; lower optim.lr "
                                         "or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optim.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
            optimizer.step()
            scheduler.step()
            done = iteration + 1
            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if ctx.is_main and (done % int(train_cfg["log_interval"]) == 0 or done == iters):
                seconds = (time.perf_counter() - tick) / max(1, done - start)
                details = {k: round(float(v.detach()), 5) for k, v in losses.items() if k != "loss"}
                log_writer.writerow([done, f"{loss.item():.6f}", f"{lr:.6e}", f"{seconds:.3f}", json.dumps(details)])
                log_file.flush()
                writer.add_scalar("train/loss", loss.item(), done)
                writer.add_scalar("train/lr", lr, done)
            if done % int(train_cfg["eval_interval"]) == 0 or done == iters:
                metrics = evaluate(model, val_set, eval_tf, ctx, recipe["data"].get("val_limit"), progress)
                key = "PQ" if "PQ" in metrics else "mIoU"
                if ctx.is_main:
                    writer.add_scalar(f"val/{key}", metrics[key], done)
                    log.info("iteration %d: %s %.2f", done, key, metrics[key])
                    _append_val_row(out_dir / "val.csv", done, metrics)
                    if best["metric"] is None or metrics[key] > best["metric"]:
                        best = {"metric": metrics[key], "key": key, "iteration": done}
                        save_checkpoint(out_dir / "best.pth", model, optimizer, scheduler, done, best, recipe)
            if ctx.is_main and (done % int(train_cfg["checkpoint_interval"]) == 0 or done == iters):
                save_checkpoint(out_dir / "last.pth", model, optimizer, scheduler, done, best, recipe)
            if done % int(train_cfg["checkpoint_interval"]) == 0:
                ctx.barrier()
    finally:
        bar.close()
        if ctx.is_main:
            writer.close()
            log_file.close()
        ctx.close()
    if ctx.is_main:
        (out_dir / "metrics.json").write_text(json.dumps({"final": metrics, "best": best}, indent=2,
                                                         default=_json_default))
    return {"final": metrics, "best": best}


def _append_val_row(path: Path, iteration: int, metrics: Dict[str, Any]) -> None:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["iteration", *scalars])
        writer.writerow([iteration, *(f"{v:.4f}" for v in scalars.values())])


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating, torch.Tensor)):
        return float(value)
    return str(value)
