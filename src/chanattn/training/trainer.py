"""The training loop, in the pieces of torchvision's reference script: build the data, the model
and the optimiser; ``train_one_epoch`` and ``evaluate`` each epoch; save a checkpoint; and a short
``train(config)`` that composes them, on one process or under torchrun. ``evaluate_checkpoint``
scores a saved run.

    setup_device(cfg)                        torchrun's process group, this rank's device
    build_data(cfg, info, device)            data set, batch loaders, augmentation
    build_model(cfg, classes, in_chans, size) create_model(arch, attn, ...) for the data set
    build_optimizer(cfg, model), lr_at(...)  SGD/AdamW over param_groups(); lr of every step
    wrap_model(model, cfg, info, device)     DistributedDataParallel, torch.compile
    train_one_epoch(...)                     one pass over the training batches
    evaluate(...)                            loss, top-1, top-5 over a loader (summed over ranks)
    checkpoint_state(...), save_epoch(...)   what a checkpoint holds; last/best.pt and metrics.jsonl
    resume_state(...), init_weights(...)     continue a run; start one from another's weights
    train(cfg, resume=..., overwrite=..., epochs=..., callbacks=...)

What long runs get:

- a checkpoint every epoch, written atomically (``DIR/last.pt``; the one before it is kept as
  ``DIR/previous.pt``; the best test top-1 as ``DIR/best.pt``), holding model, optimiser, scheduler,
  grad scaler, RNG states, epoch, config and the metrics so far;
- a run directory is never overwritten silently (:mod:`.rundir`): a new run into a directory that
  holds one is refused unless ``overwrite``; ``resume="auto"`` continues when ``DIR/last.pt`` exists
  and starts otherwise (what torchrun's elastic restarts need); ``resume=DIR`` continues that run;
- a continued run ends with the weights an uninterrupted run would have: the batch order and the
  augmentation are functions of (seed, epoch, rank), the global RNG is restored, the learning rate
  is a function of the step (``epochs`` may grow or shrink when continuing: :func:`lr_at`);
- ``init_from`` starts a new run (new optimiser, epoch 0) from another checkpoint's model weights;
- ``DIR/metrics.jsonl`` (one line per epoch, the epochs of the checkpoint), ``DIR/config.yaml``,
  ``DIR/summary.json`` at the end; every file through :mod:`chanattn.io`; with ``log``,
  ``DIR/metrics.csv`` and TensorBoard scalars (:mod:`.loggers`);
- checkpoints carry ``model_config`` (:func:`run_model_config`), which :func:`chanattn.load_model`
  builds the model from;
- a loss that becomes NaN or Inf stops the run with :class:`TrainingDiverged`, before any checkpoint
  of that epoch is written;
- the output directory is checked (writable, free space) before the first step;
- :class:`~.callbacks.Callback` hooks at the start and end of the run and of each epoch, at each
  loss and step end; ``on_epoch_end`` may stop the run; the loggers and the reliability tests'
  fault injection (``CHANATTN_FAULT``, :class:`~.callbacks.FaultInjection`) are callbacks too;
- timm's RandAugment and Mixup/CutMix for image folders (``augment``, ``mixup``, ``cutmix``).

Distributed (``torchrun --nproc_per_node N -m chanattn train ...``): DistributedDataParallel,
each rank sees its shard of every epoch's permutation, ``batch_size`` is the global batch
(``batch_size / N`` per rank), metrics are summed over the ranks, rank 0 writes every file, and at the
end the ranks compare digests of their weights (``summary.json``: ``weight_digests``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._optional import require
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..io import write_text
from . import threads as _threads
from .callbacks import Callback, FaultInjection
from .checkpoint import (
    capture_rng,
    load_checkpoint,
    load_model_state,
    load_weights,
    restore_rng,
    save_checkpoint,
)
from .config import RANDAUGMENT_DEFAULT, TrainConfig, recipe_line
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, init_distributed, state_digest
from .loggers import build_loggers
from .progress import Progress
from .rundir import RunPlan, clear_run, plan_run, write_metrics

__all__ = [
    "Callback",
    "RunState",
    "TrainingDiverged",
    "build_data",
    "build_model",
    "build_optimizer",
    "evaluate",
    "evaluate_checkpoint",
    "lr_at",
    "param_groups",
    "train",
    "train_one_epoch",
]


# ------------------------------------------------------------------------------------------ build
def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
        if name == "cuda" and info is not None and info.enabled:
            name = f"cuda:{info.local_rank}"
    elif name != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device(name)


def setup_device(cfg: TrainConfig) -> tuple[DistInfo, torch.device]:
    """Join the process group when torchrun started us; the device of this rank; the run's
    determinism settings."""
    device_type = (
        "cuda"
        if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    info = init_distributed(device_type)
    device = resolve_device(cfg.device, info)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp fp16 needs a CUDA device (use amp bf16 on CPU)")
    if cfg.batch_size % info.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is the global batch and must be divisible by the "
            f"{info.world_size} ranks"
        )
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return info, device


@dataclass
class Data:
    """The data of a run: the data set (``data.train``, ``data.test``, ``data.spec``), the batch
    loaders of this rank, the augmentation on the device and timm's Mixup/CutMix (or None)."""

    data: Any
    train_loader: Any
    test_loader: Any
    augment: nn.Module
    mixup: Any = None

    @property
    def spec(self):
        return self.data.spec


def build_data(cfg: TrainConfig, info: DistInfo, device: torch.device) -> Data:
    """Load the data set (rank 0 downloads first) and build this rank's loaders: training batches
    of ``batch_size / world_size`` (every rank the same number of full batches), evaluation batches
    that see each test image once over the ranks."""
    from ..data import Augment, BatchLoader, load_data

    if cfg.download and info.enabled and not info.is_main:
        barrier(info)  # rank 0 downloads first
        data = load_data(cfg.dataset, cfg.data_root, download=False, image_size=cfg.image_size)
    else:
        data = load_data(cfg.dataset, cfg.data_root, download=cfg.download, image_size=cfg.image_size)
        if cfg.download and info.enabled:
            barrier(info)

    def loader(split, batch: int, train: bool) -> BatchLoader:
        return BatchLoader(split, batch, shuffle=train, drop_last=train, seed=cfg.seed, rank=info.rank,
                           world_size=info.world_size, device=device, num_workers=cfg.num_workers,
                           pad_to_equal=train)

    train_loader = loader(data.train, cfg.batch_size // info.world_size, train=True)
    test_loader = loader(data.test, max(cfg.eval_batch_size // info.world_size, 1), train=False)
    if len(train_loader) == 0:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training images "
            f"({cfg.dataset}); use a smaller --batch-size"
        )
    augment: nn.Module = Augment(data.spec, crop_padding=cfg.crop_padding, hflip=cfg.hflip)
    mixup = None
    if cfg.augment or cfg.mixup or cfg.cutmix:  # timm's transforms (cfg.validate: image folders only)
        from ..data.timm_augment import BatchMixup, RandAugment, WithRandAugment

        if cfg.augment:
            config = RANDAUGMENT_DEFAULT if cfg.augment == "randaugment" else cfg.augment
            augment = WithRandAugment(RandAugment(config, data.spec.image_size[0], data.spec.mean), augment)
        if cfg.mixup or cfg.cutmix:
            if (cfg.batch_size // info.world_size) % 2:
                raise ConfigError(f"--mixup/--cutmix mix each image with another of its batch: the batch per "
                                  f"rank must be even, got {cfg.batch_size // info.world_size}")
            mixup = BatchMixup(cfg.mixup, cfg.cutmix, cfg.label_smoothing, data.spec.num_classes)
    return Data(data, train_loader, test_loader, augment.to(device), mixup)


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int,
                image_size: tuple[int, int] | None = None) -> nn.Module:
    """The model of a config: ``create_model(arch, attn, ...)`` sized for the data set (its
    channels, and its image size, which fixes the per-stage settings of some modules)."""
    from ..models import create_model

    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("in_chans", in_chans)
    if image_size is not None:
        kwargs.setdefault("input_size", tuple(image_size))
    return create_model(
        cfg.arch, attn=cfg.attn, num_classes=num_classes, attn_kwargs=dict(cfg.attn_kwargs) or None, **kwargs
    )


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True) -> list[dict]:
    """Two groups: decayed and not. Never decayed: each attention module's ``no_weight_decay()``
    (SRM's parameters, GCT's beta, ...); with ``decay_norm_and_bias=False`` also every norm
    parameter and bias (every parameter with fewer than two dimensions)."""
    from ..layers import no_weight_decay_names

    skip = set(no_weight_decay_names(model))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in skip or (not decay_norm_and_bias and p.ndim <= 1):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step`` (0-based): the schedule over epochs (fractional, so
    cosine and warm-up move every step; step and multistep change at epoch boundaries), with a
    linear warm-up from ``lr * warmup_factor`` over ``warmup_epochs``.

    A function of ``cfg.epochs`` only through the cosine schedule: when a continued run changes
    ``epochs``, a cosine schedule is recomputed over the new length (the lr rises back to where the
    longer curve is at that step: a partial warm restart), while multistep and step keep their
    milestones in absolute epochs (past the last milestone the lr stays at its final value)."""
    epoch = step / steps_per_epoch
    if cfg.schedule == "multistep":
        lr = cfg.lr * cfg.gamma ** sum(int(epoch) >= m for m in cfg.milestones)
    elif cfg.schedule == "step":
        lr = cfg.lr * cfg.gamma ** (int(epoch) // cfg.step_size)
    elif cfg.schedule == "cosine":
        t = min(max((epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-8), 0.0), 1.0)
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        lr = cfg.lr
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        f = cfg.warmup_factor + (1 - cfg.warmup_factor) * epoch / cfg.warmup_epochs
        lr = lr * f
    return lr


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63 - 1)


def check_output_dir(out: str, model: nn.Module, optimizer_slots: int) -> None:
    """Fail before training when ``out`` cannot take the checkpoints: not a writable directory, or
    less free space than three checkpoints (last, previous, best) need."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {out!r}: {exc.strerror or exc}") from None
    if not os.path.isdir(out):
        raise ConfigError(f"the output path {out!r} exists and is not a directory")
    probe = os.path.join(out, f".write-probe-{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ConfigError(f"the output directory {out!r} is not writable: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    need = 3 * nbytes * (1 + optimizer_slots) + (16 << 20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise ConfigError(
            f"the output directory {out!r} has {free / 2**20:.1f} MiB free; the checkpoints of this "
            f"run need about {need / 2**20:.1f} MiB"
        )


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------- train and evaluate
@dataclass
class RunState:
    """Where a run stands: epochs finished, optimiser steps taken, the best test top-1 so far and
    the metrics line of every finished epoch."""

    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list = field(default_factory=list)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    augment,
    cfg: TrainConfig,
    epoch: int,
    state: RunState,
    *,
    device: torch.device,
    info: DistInfo | None = None,
    scaler: torch.amp.GradScaler | None = None,
    callbacks: Sequence[Callback] = (),
    progress: Progress | None = None,
    mixup=None,
) -> dict[str, float]:
    """One pass over ``loader``'s training batches (``state.step`` advances by each): lr of the step,
    augmentation from a generator seeded by (seed, epoch, rank), forward, backward, optimiser step.
    With ``mixup`` (:class:`~chanattn.data.timm_augment.BatchMixup`) the batch is mixed after the
    augmentation and the loss is the soft-target cross-entropy (``train_top1`` still counts the
    unmixed labels).

    Returns the epoch's training metrics summed over the ranks (``lr`` of its last step,
    ``train_loss``, ``train_top1``, ``images``, ``images_per_s``, ``epoch_time_s``).

    Raises:
        TrainingDiverged: the loss became NaN or Inf (checked at each progress update and at the end).
    """
    info = info or DistInfo()
    steps_per_epoch = len(loader)
    progress = progress or Progress("none", epoch, cfg.epochs, steps_per_epoch, cfg.log_interval)
    loader.set_epoch(epoch)
    gen = torch.Generator(device=device)
    gen.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
    model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    seen = 0
    lr = lr_at(cfg, state.step, steps_per_epoch)
    for i, (images, labels) in enumerate(loader):
        lr = lr_at(cfg, state.step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = augment(images, generator=gen, train=True)
        if mixup is not None:
            x, targets = mixup(x, labels, gen)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.amp):
            logits = model(x)
            if mixup is not None:
                loss = mixup.loss(logits.float(), targets)
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        for cb in callbacks:
            loss = cb.on_loss(epoch, i, loss)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        state.step += 1
        for cb in callbacks:
            cb.on_step_end(epoch, i)
        d = loss.detach()
        nonfinite |= ~torch.isfinite(d)
        loss_sum += d.double() * labels.numel()
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += labels.numel()
        if progress.wants_update(i + 1) or i + 1 == steps_per_epoch:
            if bool(all_reduce_sum([float(nonfinite)], info, device)[0]):
                _diverged(cfg, epoch, i, state)
            progress.update(
                i + 1,
                loss_sum.item() / seen,
                100.0 * correct.item() / seen,
                seen * info.world_size / (time.perf_counter() - t0),
                lr,
            )
    train_time = time.perf_counter() - t0
    tl, tc, tn = all_reduce_sum([loss_sum.item(), correct.item(), float(seen)], info, device)
    return {"lr": lr, "train_loss": tl / tn, "train_top1": 100.0 * tc / tn, "images": tn,
            "images_per_s": tn / train_time, "epoch_time_s": train_time}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    augment,
    device: torch.device,
    *,
    amp: str = "none",
    channels_last: bool = False,
    info: DistInfo | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over every example of ``loader`` (summed over ranks)."""
    info = info or DistInfo()
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, labels in loader:
        x = augment(images, train=False)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(dim=1).sum().item()
        count += labels.numel()
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], info, device)
    count = max(count, 1)
    return {
        "loss": loss_sum / count,
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "examples": int(count),
    }


def _diverged(cfg: TrainConfig, epoch: int, step: int, state: RunState, what: str = "training loss") -> None:
    kept = (
        f"the last good checkpoint {os.path.join(cfg.out, 'last.pt')} (epoch {state.epoch}) is kept"
        if state.epoch
        else "no checkpoint was written"
    )
    raise TrainingDiverged(
        f"the {what} became NaN/Inf at epoch {epoch}, step {step + 1}; stopped ({kept}); "
        f"try a lower --lr (now {cfg.lr}) or --grad-clip"
    )


# ------------------------------------------------------------------------------------ checkpoints
def run_model_config(model: nn.Module, spec=None, dataset: str | None = None) -> dict[str, Any] | None:
    """What builds the model again and what input it takes: ``model.chanattn_config`` (recorded by
    ``create_model``) with the data set's ``input_size`` (C, H, W), ``mean``, ``std``, ``classes``
    (``spec``, a :class:`~chanattn.data.spec.DatasetSpec`) and name. :func:`chanattn.load_model`
    builds a checkpoint's model from it. None for a model without a config, or with options that
    are objects (``load_model`` then rebuilds the model from the training config)."""
    cfg = getattr(model, "chanattn_config", None)
    if not isinstance(cfg, dict):
        return None
    try:  # plain lists and dicts, which weights_only loads (tuples become lists)
        out = json.loads(json.dumps(cfg, default=list))
    except (TypeError, ValueError):  # an option that is an object (a class, a function): not recordable
        return None
    if spec is not None:
        out.update(input_size=[spec.in_chans, *spec.image_size], mean=list(spec.mean), std=list(spec.std),
                   classes=list(spec.classes))
    if dataset is not None:
        out["dataset"] = dataset
    return out


def checkpoint_state(cfg: TrainConfig, state: RunState, model: nn.Module, optimizer, scaler,
                     steps_per_epoch: int, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint holds after ``state.epoch`` (see :mod:`.checkpoint`); ``model_config``
    (:func:`run_model_config`) is kept when given."""
    extra = {"model_config": model_config} if model_config is not None else {}
    return {
        **extra,
        "epoch": state.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": state.step, "steps_per_epoch": steps_per_epoch},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng(),
        "config": cfg.to_dict(),
        "metrics": state.history[-1],
        "history": state.history,
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
    }


def save_epoch(out: str, ckpt: dict[str, Any], is_best: bool) -> None:
    """``DIR/last.pt`` (the one before becomes ``previous.pt``), ``DIR/best.pt`` when the epoch is the
    best so far, then ``DIR/metrics.jsonl`` with the checkpoint's epochs."""
    save_checkpoint(ckpt, os.path.join(out, "last.pt"))
    if is_best:
        save_checkpoint(ckpt, os.path.join(out, "best.pt"), keep_previous=False)
    write_metrics(out, ckpt["history"])


def resume_state(ckpt: dict[str, Any], model: nn.Module, optimizer, scaler, out: str) -> RunState:
    """Load a checkpoint's model, optimiser, grad scaler and RNG states; the run's state at its epoch."""
    load_model_state(model, ckpt["model"], f"the checkpoint in {out!r}",
                     "that is the model its own config builds now: was the model code changed since it was "
                     "written?")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"the optimiser state in the checkpoint in {out!r} does not fit the model of its config: "
            f"{str(exc).splitlines()[0]}") from None
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    state = RunState(
        epoch=int(ckpt["epoch"]),
        step=int(ckpt["scheduler"]["step"]),
        best_top1=float(ckpt.get("best_top1", -1.0)),
        best_epoch=int(ckpt.get("best_epoch", 0)),
        history=list(ckpt.get("history", [])),
    )
    restore_rng(ckpt["rng"])
    return state


def init_weights(model: nn.Module, cfg: TrainConfig) -> str:
    """Load the model weights of ``cfg.init_from`` into ``model`` (fine-tuning); what they were."""
    state, source = load_weights(cfg.init_from)
    load_model_state(
        model, state, f"--init-from {source}",
        f"it needs weights of {cfg.arch} with {cfg.attn or 'no attention'}"
        f"{' and ' + str(cfg.model_kwargs) if cfg.model_kwargs else ''} for {cfg.dataset}: start from a "
        "checkpoint of the same --arch, --attn, --model-kwargs and number of classes")
    return source


def _save_config(cfg: TrainConfig) -> None:
    yaml = require("yaml", "the run's config.yaml")
    write_text(os.path.join(cfg.out, "config.yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------------------------------ train
def wrap_model(model: nn.Module, cfg: TrainConfig, info: DistInfo, device: torch.device) -> nn.Module:
    """The module the loop calls: DistributedDataParallel under torchrun, torch.compile'd with
    ``cfg.compile`` (the parameters stay ``model``'s)."""
    run_model = model
    if info.enabled:
        run_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        run_model = torch.compile(run_model)
    return run_model


def _start_lines(cfg: TrainConfig, plan: RunPlan, state: RunState, data: Data, model: nn.Module,
                 source: str | None, recipe_note: str | None, info: DistInfo,
                 device: torch.device) -> list[str]:
    """What a run prints before its first step: the model and data, the recipe in force and how it
    was chosen, where the weights come from; or where a continued run resumes; and a busy machine."""
    steps = len(data.train_loader)
    lines = []
    if plan.ckpt is None:
        n_params = sum(p.numel() for p in model.parameters())
        lines.append(
            f"train {cfg.arch}{'+' + cfg.attn if cfg.attn else ''} on {cfg.dataset}: {n_params:,} params, "
            f"{len(data.data.train)} train / {len(data.data.test)} test images, {cfg.epochs} "
            f"epoch{'s' if cfg.epochs != 1 else ''} x "
            f"{steps} steps, batch {cfg.batch_size}, {device}"
            f"{f', {info.world_size} ranks' if info.enabled else ''}")
        lines.append(recipe_line(cfg, recipe_note))
        if source:
            lines.append(f"weights from {source}; a new optimiser, from epoch 1")
    elif state.epoch >= (cfg.stop_after or cfg.epochs):
        extend = f" (--epochs N > {cfg.epochs} with --resume extends it)" if state.epoch >= cfg.epochs else ""
        lines.append(f"{cfg.out}: the run has done {state.epoch} of its {cfg.epochs} epochs; nothing to "
                     f"train{extend}")
    else:
        change = _schedule_change(plan, state.step, steps) if plan.epochs_before else ""
        lines.append(f"resume {cfg.out} at epoch {state.epoch + 1}/{cfg.epochs}{change}")
    busy = _threads.busy_warning(_threads.usable_cores(), _threads.load_average(), torch.get_num_threads(),
                                 per_process=info.enabled)
    if busy:
        lines.append(f"warning: {busy}")
    return lines


def _schedule_change(plan: RunPlan, step: int, steps_per_epoch: int) -> str:
    """What continuing with another ``epochs`` does to the learning rate."""
    import dataclasses

    cfg = plan.cfg
    old = dataclasses.replace(cfg, epochs=plan.epochs_before)
    now, before = lr_at(cfg, step, steps_per_epoch), lr_at(old, step, steps_per_epoch)
    text = f"; the schedule now spans {cfg.epochs} epochs (it spanned {plan.epochs_before})"
    if cfg.schedule == "cosine":
        return text + f": the cosine is recomputed over them, lr {now:.4g} now ({before:.4g} on the old one)"
    if cfg.schedule in ("multistep", "step"):
        return text + f": {cfg.schedule} keeps its milestones in epochs, lr {now:.4g} now"
    return text


def train(
    cfg: TrainConfig,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    epochs: int | None = None,
    quiet: bool = False,
    recipe_note: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train ``cfg`` into ``cfg.out`` (or continue a run) and return its summary.

    Args:
        cfg: the configuration (with ``resume=DIR`` only its runtime fields count).
        resume: None: a new run (refused when ``cfg.out`` holds one, unless ``overwrite``);
            ``"auto"``: continue the run in ``cfg.out`` when it has a ``last.pt``, else start;
            a run directory or checkpoint file: continue that run with its saved configuration.
        overwrite: start over in a directory that holds a run (its run files are deleted first).
        epochs: a new length for a continued run's schedule (``"auto"`` takes ``cfg.epochs``).
        quiet: print nothing (the progress display and the start lines).
        recipe_note: how the recipe was chosen, shown in the start line (the command line's words).
        callbacks: :class:`Callback` hooks, called in order on every rank (see
            :mod:`.callbacks` for when each fires; ``on_epoch_end`` returning True stops the run
            after that epoch). The loggers of ``cfg.log`` (rank 0) and ``CHANATTN_FAULT`` add their own.

    Raises:
        ConfigError: bad configuration, a run directory that holds another run, unusable output
            directory, missing data.
        CheckpointError: ``resume`` or ``init_from`` has no readable or fitting checkpoint.
        TrainingDiverged: the loss became NaN or Inf (the last good checkpoint stays in place).
    """
    plan = plan_run(cfg, resume=resume, overwrite=overwrite, epochs=epochs)
    cfg = plan.cfg
    fault = FaultInjection.from_env()
    callbacks = [*callbacks, *([fault] if fault else [])]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info, device = setup_device(cfg)
    loggers = build_loggers(cfg) if info.is_main else []  # a missing tensorboard fails here, before any file

    torch.manual_seed(cfg.seed)
    data = build_data(cfg, info, device)
    model = build_model(cfg, data.spec.num_classes, data.spec.in_chans, data.spec.image_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    if info.is_main:
        if plan.clear:
            clear_run(cfg.out)
        check_output_dir(cfg.out, model, 2 if cfg.optimizer == "adamw" else 1)
    barrier(info)

    source = None
    if plan.ckpt is not None:
        state = resume_state(plan.ckpt, model, optimizer, scaler, cfg.out)
    else:
        state = RunState()
        source = init_weights(model, cfg) if cfg.init_from else None
    run_model = wrap_model(model, cfg, info, device)
    if info.is_main:
        _save_config(cfg)
        if plan.ckpt is not None:  # the metrics file holds exactly the epochs of the checkpoint
            write_metrics(cfg.out, state.history)
    show = info.is_main and not quiet
    if show:
        for line in _start_lines(cfg, plan, state, data, model, source, recipe_note, info, device):
            print(line, file=sys.stderr)
    try:
        return _run_epochs(cfg, state, data, model, run_model, optimizer, scaler, [*callbacks, *loggers],
                           info, device, show)
    finally:
        for logger in loggers:
            close = getattr(logger, "close", None)
            if close is not None:
                close()


def _run_epochs(cfg: TrainConfig, state: RunState, data: Data, model: nn.Module, run_model: nn.Module,
                optimizer, scaler, callbacks: list[Callback], info: DistInfo, device: torch.device,
                show: bool) -> dict[str, Any]:
    """The epochs of :func:`train` from ``state.epoch + 1``, the summary at the end."""
    steps_per_epoch = len(data.train_loader)
    last_epoch = cfg.stop_after or cfg.epochs
    model_config = run_model_config(model, data.spec, cfg.dataset)
    for cb in callbacks:
        cb.on_train_start(cfg, state)
    stopped_by = None
    started = time.perf_counter()
    for epoch in range(state.epoch + 1, last_epoch + 1):
        progress = Progress(
            cfg.progress if show else "none", epoch, cfg.epochs, steps_per_epoch, cfg.log_interval
        )
        for cb in callbacks:
            cb.on_epoch_start(epoch)
        stats = train_one_epoch(run_model, optimizer, data.train_loader, data.augment, cfg, epoch, state,
                                device=device, info=info, scaler=scaler, callbacks=callbacks,
                                progress=progress, mixup=data.mixup)
        test = evaluate(run_model, data.test_loader, data.augment, device, amp=cfg.amp,
                        channels_last=cfg.channels_last, info=info)
        record = {
            "epoch": epoch,
            "lr": stats["lr"],
            "train_loss": stats["train_loss"],
            "train_top1": stats["train_top1"],
            "test_loss": test["loss"],
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "images_per_s": stats["images_per_s"],
            "epoch_time_s": stats["epoch_time_s"],
            "steps": state.step,
        }
        if not math.isfinite(test["loss"]):
            _diverged(cfg, epoch, steps_per_epoch - 1, state, what="test loss")
        state.epoch = epoch
        state.history.append(record)
        is_best = test["top1"] > state.best_top1
        if is_best:
            state.best_top1, state.best_epoch = test["top1"], epoch
        if info.is_main:
            ckpt = checkpoint_state(cfg, state, model, optimizer, scaler, steps_per_epoch, model_config)
            save_epoch(cfg.out, ckpt, is_best)
        progress.close(record)
        stop = [type(cb).__name__ for cb in callbacks if cb.on_epoch_end(epoch, record)]
        if info.enabled and all_reduce_sum([float(bool(stop))], info, device)[0] and not stop:
            stop = ["a callback on another rank"]  # every rank stops when one rank's callback asks
        barrier(info)
        if stop and epoch < last_epoch:
            stopped_by = ", ".join(stop)
            if show:
                print(f"stopped after epoch {epoch} by {stopped_by} (--resume {cfg.out} continues the run)",
                      file=sys.stderr)
            break

    summary = _summary(cfg, state, model, info, device, time.perf_counter() - started)
    summary["stopped_by"] = stopped_by
    if info.is_main:
        write_text(os.path.join(cfg.out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    if info.enabled:
        barrier(info)
    for cb in callbacks:
        cb.on_train_end(summary)
    return summary


def _summary(cfg: TrainConfig, state: RunState, model: nn.Module, info: DistInfo, device: torch.device,
             wall_time: float) -> dict[str, Any]:
    digests = all_gather_objects(state_digest(model), info)
    final = state.history[-1] if state.history else {}
    return {
        "arch": cfg.arch,
        "attn": cfg.attn,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": cfg.epochs,
        "epochs_done": state.epoch,
        "finished": state.epoch >= cfg.epochs,
        "final_top1": final.get("test_top1"),
        "final_top5": final.get("test_top5"),
        "final_loss": final.get("test_loss"),
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "train_time_s": sum(r["epoch_time_s"] for r in state.history),
        "wall_time_s": wall_time,
        "world_size": info.world_size,
        "device": str(device),
        "weight_digests": digests,
        "ranks_in_sync": len(set(digests)) == 1,
        "rank_metrics": all_gather_objects(final, info),
    }


# ------------------------------------------------------------------------------------------ eval
def evaluate_checkpoint(
    path: str,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    download: bool = False,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 512,
) -> dict[str, Any]:
    """Top-1, top-5 and loss of a checkpoint (a file, or a run directory: its best.pt, else last.pt)."""
    from ..data import Augment, BatchLoader, load_data

    if os.path.isdir(path):
        for name in ("best.pt", "last.pt"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise CheckpointError(f"{path!r} holds no best.pt or last.pt")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, got {split!r}")
    ckpt = load_checkpoint(path)
    cfg = TrainConfig(**ckpt["config"])
    ds = dataset or cfg.dataset
    data = load_data(
        ds,
        data_root if data_root is not None else cfg.data_root,
        download=download,
        image_size=cfg.image_size,
    )
    model = build_model(cfg, data.spec.num_classes, data.spec.in_chans, data.spec.image_size)
    load_model_state(
        model, ckpt["model"],
        f"checkpoint {path!r} ({cfg.arch}, {cfg.attn or 'no attention'}, trained on {cfg.dataset})",
        f"the model for data set {ds!r} has {data.spec.num_classes} classes and {data.spec.in_chans} "
        f"input channels: evaluate it on {cfg.dataset!r}" if ds != cfg.dataset else
        "the model code changed since it was written?")
    dev = resolve_device(device)
    model.to(dev)
    loader = BatchLoader(
        getattr(data, split), batch_size, shuffle=False, drop_last=False, device=dev, pad_to_equal=False
    )
    augment = Augment(data.spec).to(dev)
    result = evaluate(model, loader, augment, dev)
    result.update(
        checkpoint=path, epoch=int(ckpt["epoch"]), dataset=ds, split=split, arch=cfg.arch, attn=cfg.attn
    )
    return result
