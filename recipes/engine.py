"""The training and evaluation engine: one CPU, one GPU, or many through ``torchrun`` (DDP).

Determinism and exact resume: the sample order of every epoch is a permutation
drawn from ``(seed, epoch)``, every sample's augmentation is drawn from
``(seed, epoch, index)``, and checkpoints hold the model, optimiser, scheduler,
iteration and RNG states; a resumed run therefore continues with exactly the
batches, augmentations and dropout masks the uninterrupted run would have used.

Nothing is lost on a stop: SIGINT (Ctrl-C) or SIGTERM finishes the current step, writes
``last.pth`` and raises :class:`TrainingInterrupted` (a second Ctrl-C stops at once); the
checkpoint of an evaluation step is written before the evaluation runs and marked as
awaiting it, so a crash or a stop during evaluation resumes with that evaluation. Checkpoints
are written to a temporary file, flushed to disk and renamed into place; a full disk raises an
``OSError`` that says so and leaves the previous checkpoint intact. A run folder that already
holds a run is never overwritten: pass ``resume`` to continue it.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

import zoo
from zoo.execution import using
from zoo.hub import write_files_atomically

from .config import (DATA_ENV, RESUMABLE_KEYS, RecipeError, dataset_path, error_message, resume_changes,
                     validate_recipe)
from .datasets import collate_samples

__all__ = ["train", "Trainer", "evaluate", "DistributedContext", "EpochBatchSampler", "build_optimizer",
           "build_scheduler", "save_checkpoint", "load_checkpoint", "CheckpointError", "TrainingInterrupted",
           "RunFolderError", "build_model", "build_train_data", "build_val_data", "to_label_size"]

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

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return bool(flag)
        value = torch.tensor([int(bool(flag))], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

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

class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: missing, unreadable, or not a training checkpoint."""


_TRAINING_KEYS = ("model", "optimizer", "scheduler", "iteration", "best", "recipe", "rng")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`zoo.hub.write_files_atomically`: serialised in memory first, so that a full
    disk surfaces as ``OSError(ENOSPC)`` with a clear message (torch's zip writer reports an opaque
    ``enforce fail``), and the previous file stays until the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_files_atomically({path: buffer.getbuffer()}, "free some space and resume with --resume")


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Delete the temporary files of checkpoint writes that were killed (``.last.pth.XXXX.tmp``)."""
    stale = [p for p in Path(folder).glob(".*.pth.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink()
    return stale


def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, iteration: int, best: Dict[str, Any],
                    recipe: Dict[str, Any], pending_eval: bool = False) -> None:
    """``pending_eval``: the evaluation of ``iteration`` has not run yet (resume runs it first)."""
    _atomic_torch_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "iteration": iteration, "best": best, "recipe": recipe, "pending_eval": pending_eval,
        "rng": _rng_state(),
    }, path)


def _rng_state() -> Dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A training checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" + (
            "; the run has not saved one yet: train without --resume to start it" if path.name == "last.pth" else ""))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}); "
                              "it may be truncated: resume from the previous one") from err
    missing = [k for k in _TRAINING_KEYS if not (isinstance(state, dict) and k in state)]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (it lacks {', '.join(missing)}): it holds weights only, so "
            f"there is no optimiser, schedule or data position to resume. To start a new run from these weights "
            f"use --set model.init_checkpoint={path}")
    return state


def _restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ building blocks from a recipe

def build_model(recipe: Dict[str, Any], weights: Optional[str] = None) -> nn.Module:
    """The recipe's model through ``zoo.create``, with ``weights`` (or else ``model.init_checkpoint``)
    loaded strictly; errors name the recipe key."""
    model_cfg = recipe["model"]
    checkpoint = weights or model_cfg.get("init_checkpoint")
    try:
        return zoo.create(model_cfg["name"], checkpoint_path=checkpoint, **model_cfg.get("kwargs", {}))
    except (TypeError, ValueError) as err:
        if isinstance(err, ValueError) and checkpoint is not None:  # not a readable state_dict
            raise RecipeError(f"{checkpoint}: {error_message(err)}") from err
        raise RecipeError(f"cannot build {model_cfg['name']} with model.kwargs={model_cfg.get('kwargs', {})}: "
                          f"{error_message(err)}") from err


def build_train_data(recipe: Dict[str, Any], model: nn.Module, skip_bad: bool = False):
    """``(training set, training transform)``."""
    from . import transforms
    train_tf = transforms.build_transforms(recipe, True, model.pretrained_cfg.mean, model.pretrained_cfg.std)
    return _recipe_dataset(recipe["data"], recipe["data"]["train_split"], skip_bad), train_tf


def build_val_data(recipe: Dict[str, Any], model: nn.Module, skip_bad: bool = False):
    """``(validation set, eval transform)``: all that evaluation needs (the training split may be absent)."""
    from . import transforms
    eval_tf = transforms.build_transforms(recipe, False, model.pretrained_cfg.mean, model.pretrained_cfg.std)
    return _recipe_dataset(recipe["data"], recipe["data"]["val_split"], skip_bad), eval_tf


def _recipe_dataset(data: Dict[str, Any], split: str, skip_bad: bool):
    """The recipe's dataset split from its folder under the data root; a missing folder says where it looked."""
    from . import datasets
    root = dataset_path(data["root"])
    try:
        return datasets.build_dataset(data["dataset"], root, split, skip_bad=skip_bad)
    except datasets.DatasetLayoutError as err:
        if root.exists():
            raise
        raise datasets.DatasetLayoutError(
            f"{err}\nthe recipe's data.root {data['root']!r} resolves to {root} (data root: "
            f"${DATA_ENV}={os.environ.get(DATA_ENV, '<unset>')}, else ./data); put the dataset there, set "
            f"{DATA_ENV} to the folder that holds it, or --set data.root=/path/to/it") from None


def build_criterion(recipe: Dict[str, Any], num_classes: int):
    from . import losses, matcher
    loss = recipe["loss"]
    if loss["type"] == "per_pixel":
        weight = loss.get("semantic_class_weight")
        if weight is not None and len(weight) != num_classes:
            raise ValueError(f"loss.semantic_class_weight needs one weight per class ({num_classes}), got {len(weight)}")
        return losses.PerPixelCrossEntropy(class_weight=weight)
    if loss["type"] != "mask_classification":
        raise ValueError(f"unknown loss type {loss['type']!r}: 'mask_classification' or 'per_pixel'")
    match = matcher.HungarianMatcher(cost_class=loss["class_weight"], cost_focal=loss["focal_weight"],
                                     cost_dice=loss["dice_weight"])
    return losses.SetCriterion(num_classes, match, no_object_weight=loss["no_object_weight"],
                               class_weight=loss["class_weight"], focal_weight=loss["focal_weight"],
                               dice_weight=loss["dice_weight"], compile_mask_losses=loss.get("compile", False),
                               num_points=loss.get("num_points"), semantic_weight=loss.get("semantic_weight", 0.0),
                               semantic_class_weight=loss.get("semantic_class_weight"))


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

class EvaluationStopped(Exception):
    """``evaluate`` was asked to stop before it went through the validation set."""


def to_label_size(pred: torch.Tensor, size) -> torch.Tensor:
    """A predicted id map [..., h, w] brought to the label's (H, W) by nearest neighbour, as labels are."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    lead = pred.shape[:-2]
    resized = torch.nn.functional.interpolate(pred.reshape(-1, 1, *pred.shape[-2:]).float(), size=tuple(size),
                                              mode="nearest")
    return resized.reshape(*lead, *size).to(pred.dtype)


@torch.no_grad()
def evaluate(model: nn.Module, val_set: Dataset, eval_tf, ctx: DistributedContext, limit: Optional[int] = None,
             progress: bool = True, should_stop=None) -> Dict[str, Any]:
    """Semantic metrics (mIoU, mAcc, aAcc) or panoptic quality over the validation set, whole images.

    Predictions are made at the eval transform's size and brought back to the label's size
    (nearest neighbour, semantic label maps and panoptic id maps alike). Ranks evaluate disjoint
    shards and the metric states are summed across ranks. ``should_stop()`` is asked before every
    image; when it answers True, :class:`EvaluationStopped` is raised.
    """
    from .metrics import PanopticQuality, SemanticMetrics
    net = model.module if hasattr(model, "module") else model
    cfg = net.pretrained_cfg
    net.eval()
    panoptic = getattr(net, "task", "semantic") == "panoptic"
    metric = (PanopticQuality(net.thing_classes) if panoptic else SemanticMetrics(cfg.num_classes))
    indices = list(range(len(val_set)))[: limit or None][ctx.rank::ctx.world_size]
    for index in tqdm(indices, desc="eval", disable=not (progress and ctx.is_main), leave=False):
        if should_stop is not None and should_stop():
            raise EvaluationStopped
        sample = eval_tf(val_set[index])
        images = sample["image"].unsqueeze(0).to(ctx.device)
        if panoptic:
            segment_ids, segments = net.predict(images)[0]
            gt_ids = sample["segment_ids"]
            metric.update(to_label_size(segment_ids.cpu(), gt_ids.shape[-2:]), segments, gt_ids,
                          sample["segments_info"])
        else:
            label = sample["label"].unsqueeze(0)
            metric.update(to_label_size(net.predict(images), label.shape[-2:]).cpu(), label)
    metric.reduce()
    return metric.compute()


# ------------------------------------------------------------------ stopping and run folders

class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving ``checkpoint``; ``--resume`` continues it."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path):
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped at iteration {iteration}, saved {checkpoint}; "
                         "continue with --resume")
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint


class _StopRequests:
    """Turns SIGINT/SIGTERM into a request that the loop honours at the next step boundary.

    A second SIGINT raises ``KeyboardInterrupt`` at once. Handlers are only installed from the
    main thread (Python delivers signals there); elsewhere the defaults stay.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: saving a checkpoint after this step, then stopping (Ctrl-C again to stop at once, "
                    "losing the work since the last checkpoint)", signal.Signals(signum).name)

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_stop_signals_in_worker(worker_id: int) -> None:
    """Data-loading workers leave SIGINT/SIGTERM to the main process.

    Ctrl-C reaches the whole process group: a worker that died of it would make the main
    process's next batch fail before it could save. The workers still exit with the main process.
    """
    for sig in _StopRequests.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class RunFolderError(RecipeError):
    """The output folder already holds a run and ``resume`` was not asked for."""


_RUN_FILES = ("last.pth", "best.pth", "log.csv", "val.csv", "metrics.json")


def _check_new_run_folder(out_dir: Path) -> Optional[str]:
    present = [name for name in _RUN_FILES if (out_dir / name).exists()]
    if not present:
        return None
    return (f"{out_dir} already holds a run ({', '.join(present)}); continue it with --resume, "
            "or choose another --out (nothing was overwritten)")


# ------------------------------------------------------------------ training

class Trainer:
    """One training run of a recipe in ``out_dir``, started afresh or resumed from a checkpoint.

    Its parts: :meth:`step` (one optimisation step on one batch), :meth:`evaluate` (an evaluation with
    its checkpoints and best-weights bookkeeping), :meth:`checkpoint` (``last.pth``), :meth:`log_step`
    (``log.csv`` and TensorBoard) and :meth:`run`, the loop over them that handles stop requests.
    Arguments: :func:`train`.
    """

    def __init__(self, recipe: Dict[str, Any], out_dir: Path, resume: Optional[str] = None, skip_bad: bool = False,
                 device: Optional[str] = None, progress: bool = True):
        self.recipe = recipe = validate_recipe(recipe)
        self.ctx = ctx = DistributedContext(device)
        self.out_dir = out_dir = Path(out_dir)
        self.progress = progress
        self.train_cfg = recipe["train"]
        self.iters = int(self.train_cfg["iters"])
        state, path = self._resume_state(resume)
        seed = int(self.train_cfg["seed"])
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        self.model = build_model(recipe).to(ctx.device)
        train_set, train_tf = build_train_data(recipe, self.model, skip_bad)
        self.val_set, self.eval_tf = build_val_data(recipe, self.model, skip_bad)
        self.criterion = build_criterion(recipe, self.model.pretrained_cfg.num_classes)
        self.optimizer = build_optimizer(self.model, recipe["optim"])
        self.scheduler = build_scheduler(self.optimizer, recipe["optim"], self.iters)
        self.start, self.best, self.rng_state, self.pending_eval = 0, {"metric": None, "iteration": None}, None, False
        if state is not None:
            self._restore(state, path)
        if self.start >= self.iters and not self.pending_eval:
            raise RecipeError(f"nothing to train: the run is at iteration {self.start} of {self.iters}; "
                              "raise train.iters to continue")
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temporaries(out_dir):
                log.info("removed %s, left by a checkpoint write that was killed", stale)
            (out_dir / "config.json").write_text(json.dumps(recipe, indent=2, default=list))
        self.net = self.model
        if ctx.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        sampler = EpochBatchSampler(len(train_set), int(recipe["data"]["batch_size"]), seed, ctx.rank,
                                    ctx.world_size)
        sampler.start_iteration = self.start
        self.loader = DataLoader(SeededAugmentation(train_set, train_tf, seed), batch_sampler=sampler,
                                 num_workers=int(recipe["data"].get("num_workers", 0)), collate_fn=collate_samples,
                                 worker_init_fn=_ignore_stop_signals_in_worker,
                                 persistent_workers=False, pin_memory=ctx.device.type == "cuda")
        # bf16 autocast on GPU only: on CPU it cost 2.3 val mIoU in a 460-iteration camvid run and was not
        # faster (benchmarks/reports/mask-loss-points-2026-12-02)
        self.amp = bool(self.train_cfg.get("amp")) and ctx.device.type == "cuda"
        if self.train_cfg.get("execution") and ctx.is_main:
            log.info("training forwards run with execution options %s (evaluation with the model's defaults)",
                     self.train_cfg["execution"])
        self.writer, self.log_file, self.log_writer = None, None, None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            # rows a killed start logged after its last checkpoint are retrained now: drop them, so that
            # the files hold the history of the weights that go on (an evaluation still pending reruns)
            _drop_rows_after(out_dir / "log.csv", self.start)
            _drop_rows_after(out_dir / "val.csv", self.start - 1 if self.pending_eval else self.start)
            new_log = not (out_dir / "log.csv").exists()
            self.log_file = open(out_dir / "log.csv", "a", newline="")
            self.log_writer = csv.writer(self.log_file)
            if new_log:
                self.log_writer.writerow(["iteration", "loss", "lr", "seconds_per_iter", "details"])

    def _resume_state(self, resume: Optional[str]):
        """The checkpoint to resume from and its path, after checking that the recipe may continue it."""
        ctx, out_dir = self.ctx, self.out_dir
        if not resume:
            occupied = _check_new_run_folder(out_dir) if ctx.is_main else None
            if ctx.any(occupied is not None):
                raise RunFolderError(occupied or f"{out_dir} already holds a run on rank 0")
            return None, None
        path = out_dir / "last.pth" if resume == "auto" else Path(resume)
        state = load_checkpoint(path)
        allowed, refused = resume_changes(state["recipe"], self.recipe)
        if refused:
            raise RecipeError(
                f"cannot resume {path} with a different recipe: " + "; ".join(refused) +
                f". On resume only {', '.join(k for k in RESUMABLE_KEYS if k != 'name')} may change "
                "(the rest is the state the checkpoint was trained with); start a new run with "
                f"--set model.init_checkpoint={path} to train these weights with other settings")
        if allowed and ctx.is_main:
            log.info("resuming with changed %s", ", ".join(allowed))
        return state, path

    def _restore(self, state: Dict[str, Any], path: Path) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this recipe's model and optimiser: "
                                  f"{error_message(err)}") from err
        self.start, self.best, self.rng_state = state["iteration"], state["best"], state["rng"]
        self.pending_eval = bool(state.get("pending_eval", False))
        if self.ctx.is_main:
            log.info("resumed from %s at iteration %d%s", path, self.start,
                     " (its evaluation runs first)" if self.pending_eval else "")

    def checkpoint(self, done: int, pending: bool = False, name: str = "last.pth") -> None:
        """``last.pth`` (or ``name``) after ``done`` iterations; ``pending``: its evaluation has not run yet."""
        if self.ctx.is_main:
            save_checkpoint(self.out_dir / name, self.model, self.optimizer, self.scheduler, done, self.best,
                            self.recipe, pending)

    def evaluate(self, done: int, stop: "_StopRequests") -> Dict[str, Any]:
        """Evaluate after ``done`` iterations, between a checkpoint that awaits it and one that does not."""
        self.checkpoint(done, pending=True)
        ctx = self.ctx
        try:
            # ranks must reach the metric reduction together, so only a single process cuts evaluation short
            results = evaluate(self.model, self.val_set, self.eval_tf, ctx, self.recipe["data"].get("val_limit"),
                               self.progress,
                               should_stop=None if ctx.distributed else (lambda: stop.signum is not None))
        except EvaluationStopped:
            raise TrainingInterrupted(stop.signum, done, self.out_dir / "last.pth") from None
        key = "PQ" if "PQ" in results else "mIoU"
        if ctx.is_main:
            self.writer.add_scalar(f"val/{key}", results[key], done)
            log.info("iteration %d: %s %.2f", done, key, results[key])
            _append_val_row(self.out_dir / "val.csv", done, results)
            if self.best["metric"] is None or results[key] > self.best["metric"]:
                self.best = {"metric": results[key], "key": key, "iteration": done}
                self.checkpoint(done, name="best.pth")
        self.checkpoint(done, pending=False)
        return results

    def step(self, batch: Dict[str, Any], iteration: int) -> Dict[str, torch.Tensor]:
        """One optimisation step; the losses it computed."""
        self.net.train()
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.amp), \
                using(self.model, **self.train_cfg.get("execution", {})):
            losses = compute_loss(self.net, self.criterion, batch, self.ctx.device)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {iteration}; lower optim.lr "
                                     "or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_clip = self.recipe["optim"].get("grad_clip")
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return losses

    def log_step(self, done: int, losses: Dict[str, torch.Tensor], seconds_per_iteration: float) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        loss = losses["loss"].item()
        details = {k: round(float(v.detach()), 5) for k, v in losses.items() if k != "loss"}
        self.log_writer.writerow([done, f"{loss:.6f}", f"{lr:.6e}", f"{seconds_per_iteration:.3f}",
                                  json.dumps(details)])
        self.log_file.flush()
        self.writer.add_scalar("train/loss", loss, done)
        self.writer.add_scalar("train/lr", lr, done)

    def run(self) -> Dict[str, Any]:
        """Train to ``train.iters``, evaluating and checkpointing at the recipe's intervals; the final
        metrics and the best evaluation. Raises :class:`TrainingInterrupted` after saving on SIGINT/SIGTERM."""
        ctx, start, iters = self.ctx, self.start, self.iters
        log_interval = int(self.train_cfg["log_interval"])
        eval_interval = int(self.train_cfg["eval_interval"])
        checkpoint_interval = int(self.train_cfg["checkpoint_interval"])
        metrics: Dict[str, Any] = {}
        bar = tqdm(total=iters, initial=start, desc="train", disable=not (self.progress and ctx.is_main),
                   dynamic_ncols=True)
        data_iter = iter(self.loader)  # draws the workers' base seed from the global RNG ...
        if self.rng_state is not None:
            _restore_rng(self.rng_state)  # ... so restore after it, as the uninterrupted run had it here
        tick = time.perf_counter()
        try:
            with _StopRequests() as stop:
                if self.pending_eval:
                    metrics = self.evaluate(start, stop)
                for iteration in range(start, iters):
                    if ctx.any(stop.signum is not None):
                        self.checkpoint(iteration)
                        raise TrainingInterrupted(stop.signum or signal.SIGTERM, iteration, self.out_dir / "last.pth")
                    losses = self.step(next(data_iter), iteration)
                    done = iteration + 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss'].item():.3f}",
                                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    if ctx.is_main and (done % log_interval == 0 or done == iters):
                        self.log_step(done, losses, (time.perf_counter() - tick) / max(1, done - start))
                    if done % eval_interval == 0 or done == iters:
                        metrics = self.evaluate(done, stop)
                    elif done % checkpoint_interval == 0:
                        self.checkpoint(done)
                    if done % checkpoint_interval == 0:
                        ctx.barrier()
        finally:
            bar.close()
            self.close()
        if ctx.is_main:
            (self.out_dir / "metrics.json").write_text(json.dumps({"final": metrics, "best": self.best}, indent=2,
                                                                  default=_json_default))
        return {"final": metrics, "best": self.best}

    def close(self) -> None:
        if self.ctx.is_main:
            self.writer.close()
            self.log_file.close()
        self.ctx.close()


def train(recipe: Dict[str, Any], out_dir: Path, resume: Optional[str] = None, skip_bad: bool = False,
          device: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Train ``recipe``; writes ``config.json``, ``log.csv``, TensorBoard events and checkpoints to ``out_dir``.

    ``resume``: a checkpoint path, or ``"auto"`` for ``out_dir/last.pth``; the recipe may then differ from
    the checkpoint's only in :data:`recipes.config.RESUMABLE_KEYS` (run length, intervals, data location
    and loading). Without ``resume`` the folder must not hold a run already. Returns the final metrics;
    raises :class:`TrainingInterrupted` after saving a checkpoint on SIGINT/SIGTERM.
    """
    return Trainer(recipe, out_dir, resume, skip_bad, device, progress).run()


def _drop_rows_after(path: Path, iteration: int) -> None:
    """Rewrite a run's CSV (header, then one row per iteration) without its rows past ``iteration``."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= iteration]
    if len(kept) < len(lines):
        log.info("%s: dropped %d rows logged after iteration %d, the checkpoint resumed from",
                 path.name, len(lines) - len(kept), iteration)
        write_files_atomically({path: "".join(kept).encode()}, "free some space and resume with --resume")


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
