"""The training loop: ``train(config)`` on one process or under torchrun, ``evaluate_checkpoint``.

Split as torchvision's reference script is (build the data, the model and the optimiser, then
``train_one_epoch`` and ``evaluate`` per epoch), with what long runs need:

- a checkpoint every epoch, written atomically (``DIR/last.pt``; the one before it is kept as
  ``DIR/previous.pt``; the best test top-1 as ``DIR/best.pt``), holding model, optimiser, scheduler,
  grad scaler, RNG states, epoch, config and the metrics so far;
- ``resume=DIR`` continues from ``DIR/last.pt`` so that the final weights equal an uninterrupted
  run's: the batch order and the augmentation are functions of (seed, epoch, rank), the global
  RNG is restored, the learning rate is a function of the step;
- ``DIR/metrics.jsonl`` (one line per epoch), ``DIR/config.yaml``, ``DIR/summary.json`` at the end;
- a loss that becomes NaN or Inf stops the run with :class:`TrainingDiverged`, before any checkpoint
  of that epoch is written;
- the output directory is checked (writable, free space) before the first step.

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
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..io import write_text
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import RUNTIME_FIELDS, TrainConfig
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, init_distributed, state_digest
from .progress import Progress

__all__ = [
    "TrainingDiverged",
    "build_model",
    "evaluate",
    "evaluate_checkpoint",
    "lr_at",
    "param_groups",
    "train",
]

#: Fault injection for the reliability tests: ``CHANATTN_FAULT=kill@E.S`` kills the process
#: (SIGKILL) at step S of epoch E; ``nan@E.S`` makes that step's loss NaN.
FAULT_ENV = "CHANATTN_FAULT"


# ----------------------------------------------------------------------------------------- pieces
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
    linear warm-up from ``lr * warmup_factor`` over ``warmup_epochs``."""
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


def _parse_fault() -> tuple[str, int, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        kind, where = spec.split("@")
        epoch, step = (int(v) for v in where.split("."))
    except ValueError:
        raise ConfigError(
            f"{FAULT_ENV} must look like kill@EPOCH.STEP or nan@EPOCH.STEP, got {spec!r}"
        ) from None
    if kind not in ("kill", "nan"):
        raise ConfigError(f"{FAULT_ENV}: unknown fault {kind!r} (kill or nan)")
    return kind, epoch, step


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


# -------------------------------------------------------------------------------------- evaluate
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


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------- train
@dataclass
class _State:
    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list | None = None


def train(cfg: TrainConfig, *, resume: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (or continue the run in directory ``resume``) and return its summary.

    Raises:
        ConfigError: bad configuration, unusable output directory, missing data.
        CheckpointError: ``resume`` has no readable checkpoint.
        TrainingDiverged: the loss became NaN or Inf (the last good checkpoint stays in place).
    """
    from ..data import Augment, BatchLoader, load_data

    state = _State(history=[])
    ckpt = None
    if resume is not None:
        path = resume if os.path.isfile(resume) else os.path.join(resume, "last.pt")
        if not os.path.exists(path):
            raise CheckpointError(
                f"--resume {resume!r}: no checkpoint {path!r} (a run directory holds last.pt)"
            )
        ckpt = _load_for_resume(path)
        saved = TrainConfig(**ckpt["config"])
        # only what does not change the result may differ from the saved run
        for name in RUNTIME_FIELDS:
            setattr(saved, name, getattr(cfg, name))
        saved.out = os.path.dirname(os.path.abspath(path))
        cfg = saved.validate()
    if cfg.out is None:
        raise ConfigError("an output directory is required (--out DIR)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

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

    torch.manual_seed(cfg.seed)
    if cfg.download and info.enabled and not info.is_main:
        barrier(info)  # rank 0 downloads first
        data = load_data(cfg.dataset, cfg.data_root, download=False, image_size=cfg.image_size)
    else:
        data = load_data(cfg.dataset, cfg.data_root, download=cfg.download, image_size=cfg.image_size)
        if cfg.download and info.enabled:
            barrier(info)
    spec = data.spec
    model = build_model(cfg, spec.num_classes, spec.in_chans, spec.image_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None

    if info.is_main:
        check_output_dir(cfg.out, model, 2 if cfg.optimizer == "adamw" else 1)
    barrier(info)

    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint in {cfg.out!r} does not fit the model of its config: {str(exc).splitlines()[0]}"
            ) from None
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = _State(
            epoch=int(ckpt["epoch"]),
            step=int(ckpt["scheduler"]["step"]),
            best_top1=float(ckpt.get("best_top1", -1.0)),
            best_epoch=int(ckpt.get("best_epoch", 0)),
            history=list(ckpt.get("history", [])),
        )
        restore_rng(ckpt["rng"])

    per_rank = cfg.batch_size // info.world_size

    def loader(split, batch: int, train: bool) -> BatchLoader:
        # training: every rank the same number of full batches; evaluation: each image once
        return BatchLoader(
            split,
            batch,
            shuffle=train,
            drop_last=train,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
            device=device,
            num_workers=cfg.num_workers,
            pad_to_equal=train,
        )

    train_loader = loader(data.train, per_rank, train=True)
    test_loader = loader(data.test, max(cfg.eval_batch_size // info.world_size, 1), train=False)
    if len(train_loader) == 0:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training images "
            f"({cfg.dataset}); use a smaller --batch-size"
        )
    augment = Augment(spec, crop_padding=cfg.crop_padding, hflip=cfg.hflip).to(device)

    run_model: nn.Module = model
    if info.enabled:
        run_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        run_model = torch.compile(run_model)

    if info.is_main:
        _save_config(cfg)
        if ckpt is not None:  # the metrics file holds exactly the epochs of the checkpoint
            write_text(
                os.path.join(cfg.out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in state.history)
            )
    fault = _parse_fault()
    steps_per_epoch = len(train_loader)
    last_epoch = cfg.stop_after or cfg.epochs
    n_params = sum(p.numel() for p in model.parameters())
    show = info.is_main and not quiet
    if show and state.epoch == 0:
        print(
            f"train {cfg.arch}{'+' + cfg.attn if cfg.attn else ''} on {cfg.dataset}: {n_params:,} params, "
            f"{len(data.train)} train / {len(data.test)} test images, "
            f"{cfg.epochs} epochs x {steps_per_epoch} "
            f"steps, batch {cfg.batch_size}, {device}{f', {info.world_size} ranks' if info.enabled else ''}",
            file=sys.stderr,
        )
    elif show:
        print(f"resume {cfg.out} at epoch {state.epoch + 1}/{cfg.epochs}", file=sys.stderr)

    started = time.perf_counter()
    for epoch in range(state.epoch + 1, last_epoch + 1):
        progress = Progress(
            cfg.progress if show else "none", epoch, cfg.epochs, steps_per_epoch, cfg.log_interval
        )
        train_loader.set_epoch(epoch)
        gen = torch.Generator(device=device)
        gen.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
        run_model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        seen = 0
        for i, (images, labels) in enumerate(train_loader):
            lr = lr_at(cfg, state.step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = augment(images, generator=gen, train=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                logits = run_model(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            if fault is not None and fault[1] == epoch and fault[2] == i:
                if fault[0] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                loss = loss * float("nan")
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
        test = evaluate(
            run_model, test_loader, augment, device, amp=cfg.amp, channels_last=cfg.channels_last, info=info
        )
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": tl / tn,
            "train_top1": 100.0 * tc / tn,
            "test_loss": test["loss"],
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "images_per_s": tn / train_time,
            "epoch_time_s": train_time,
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
            ckpt_state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"step": state.step, "steps_per_epoch": steps_per_epoch},
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": capture_rng(),
                "config": cfg.to_dict(),
                "metrics": record,
                "history": state.history,
                "best_top1": state.best_top1,
                "best_epoch": state.best_epoch,
            }
            save_checkpoint(ckpt_state, os.path.join(cfg.out, "last.pt"))
            if is_best:
                save_checkpoint(ckpt_state, os.path.join(cfg.out, "best.pt"), keep_previous=False)
            with open(os.path.join(cfg.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        progress.close(record)
        barrier(info)

    digests = all_gather_objects(state_digest(model), info)
    final = state.history[-1] if state.history else {}
    summary = {
        "arch": cfg.arch,
        "attn": cfg.attn,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "params": n_params,
        "epochs": cfg.epochs,
        "epochs_done": state.epoch,
        "finished": state.epoch >= cfg.epochs,
        "final_top1": final.get("test_top1"),
        "final_top5": final.get("test_top5"),
        "final_loss": final.get("test_loss"),
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "train_time_s": sum(r["epoch_time_s"] for r in state.history),
        "wall_time_s": time.perf_counter() - started,
        "world_size": info.world_size,
        "device": str(device),
        "weight_digests": digests,
        "ranks_in_sync": len(set(digests)) == 1,
        "rank_metrics": all_gather_objects(final, info),
    }
    if info.is_main:
        write_text(os.path.join(cfg.out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    if info.enabled:
        barrier(info)
    return summary


def _load_for_resume(path: str) -> dict[str, Any]:
    """Load the checkpoint to resume from. A corrupt ``last.pt`` names the intact ``previous.pt`` to
    resume from instead; resuming from another file of the run directory moves a corrupt
    ``last.pt`` aside (``last.pt.corrupt``) so that it never replaces the good ``previous.pt``."""
    directory, name = os.path.split(os.path.abspath(path))
    previous = os.path.join(directory, "previous.pt")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        if name == "last.pt" and os.path.isfile(previous):
            try:
                epoch = load_checkpoint(previous)["epoch"]
            except CheckpointError:
                raise exc from None
            raise CheckpointError(
                f"{exc}; resume from the intact previous checkpoint (epoch {epoch}) with --resume {previous}"
            ) from None
        raise
    last = os.path.join(directory, "last.pt")
    if name != "last.pt" and os.path.isfile(last):
        try:
            load_checkpoint(last)
        except CheckpointError:
            os.replace(last, last + ".corrupt")
    return ckpt


def _diverged(cfg: TrainConfig, epoch: int, step: int, state: _State, what: str = "training loss") -> None:
    kept = (
        f"the last good checkpoint {os.path.join(cfg.out, 'last.pt')} (epoch {state.epoch}) is kept"
        if state.epoch
        else "no checkpoint was written"
    )
    raise TrainingDiverged(
        f"the {what} became NaN/Inf at epoch {epoch}, step {step + 1}; stopped ({kept}); "
        f"try a lower --lr (now {cfg.lr}) or --grad-clip"
    )


def _save_config(cfg: TrainConfig) -> None:
    import yaml

    write_text(os.path.join(cfg.out, "config.yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


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
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path!r} ({cfg.arch}, {cfg.attn or 'no attention'}, trained on "
            f"{cfg.dataset}) does not fit data set {ds!r}: {str(exc).splitlines()[0]}"
        ) from None
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
