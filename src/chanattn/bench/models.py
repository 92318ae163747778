"""The model bench: what attention costs in a whole network, ours against timm's, eager and
compiled, every variant of one architecture timed in one interleaved run.

Variants of an architecture ``arch`` and a module ``attn``:

- ``ours``: ``chanattn.create_model(arch, attn=attn)`` (``attn="none"``: the backbone).
- ``timm`` (``vs_timm``), for modules with a timm counterpart (:data:`.timm_refs.TIMM_NAMES`)
  whose placement is ``"block"`` (one module per residual block, what timm's ``attn_layer`` is;
  not ``sk`` or ``splat``, which replace convolutions): for timm's ResNet family (:data:`TIMM_ARCHS`),
  ``timm.create_model(arch, block_args={"attn_layer": f})`` where ``f`` builds, block by block, timm's
  module with the hyper-parameters of ours in the same block (:func:`.timm_refs.timm_counterpart`),
  and the backbone is timm's own ``arch`` without attention; for the other architectures (the
  CIFAR ResNets, which timm lacks), our model with each attention module swapped for timm's
  counterpart, over our backbone.
- ``compiled`` (``compile``): each of those under ``torch.compile`` (the whole model; the
  optimizer step stays eager), sharing the eager model's parameters.

Two tasks per variant: ``infer`` (eval forward under ``no_grad``) and ``train`` (train mode,
forward, cross-entropy, backward, SGD step with momentum), per batch. All the callables of one
architecture go into one :func:`.core.time_interleaved` run, so that the machine's noise reaches
them alike. ``overhead`` = (time of the model with attention - time of its backbone) / time of
the backbone, per implementation, task and execution mode, from the medians.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.profile import count_macs, count_params
from .core import SlowCallError, _add_note, _error_text, compile_scope, time_interleaved

__all__ = ["TIMM_ARCHS", "bench_model", "bench_models", "default_batch"]

#: Architectures that timm builds itself with ``block_args={"attn_layer": ...}`` (same names).
TIMM_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
              "wide_resnet50_2")
TASKS = ("infer", "train")
EXECS = ("eager", "compiled")


def default_batch(arch: str) -> int:
    """The batch of the model bench: 128 for architectures made for inputs up to 64x64 (the CIFAR
    ResNets, whose training batch it is), 16 for larger inputs (ImageNet ResNets at 224x224)."""
    from ..models import model_info

    return 128 if max(model_info(arch).input_size[1:]) <= 64 else 16


@dataclass
class _Variant:
    attn: str  # "none" or a registry name
    impl: str  # "ours" or "timm"
    model: nn.Module | None
    backbone: str  # what the overhead is relative to
    desc: str = ""
    note: str = ""
    fns: dict[str, Callable[[], object]] = field(default_factory=dict)
    compile_s: float | None = None
    compile_note: str = ""


def _attn_modules(model: nn.Module, cls: type) -> list[tuple[str, nn.Module]]:
    """The outermost modules of class ``cls`` in ``model``, in ``named_modules`` order."""
    found: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, cls) and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, mod))
    return found


def _input_shapes(model: nn.Module, mods: list[tuple[str, nn.Module]],
                  input_size: Sequence[int]) -> list[tuple[int, ...]]:
    """The input shape of each module of ``mods`` in one eval forward of a batch of 1."""
    shapes: dict[int, tuple[int, ...]] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        shapes.setdefault(id(mod), tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for _, m in mods]
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return [shapes[id(m)] for _, m in mods]


def _timm_variant(arch: str, name: str, ours: nn.Module, input_size: Sequence[int],
                  num_classes: int) -> tuple[nn.Module, str]:
    """timm's model for ``(arch, name)`` with the hyper-parameters of ``ours``' modules (see the
    module docstring), and a description."""
    from ..registry import module_info
    from .timm_refs import timm_counterpart

    info = module_info(name)
    mods = _attn_modules(ours, info.cls)
    if not mods:
        raise InputError(f"{arch} with {name} has no {info.cls.__name__} to take timm's place")
    shapes = _input_shapes(ours, mods, input_size)
    if arch in TIMM_ARCHS:
        import timm

        queue = list(zip(mods, shapes))

        def attn_layer(channels: int, **_: object) -> nn.Module:
            if not queue:
                raise InputError(f"timm's {arch} has more attention slots than ours with {name}")
            (where, mod), shape = queue.pop(0)
            if shape[1] != channels:
                raise InputError(f"timm's {arch}: a block with {channels} channels where ours has "
                                 f"{shape[1]} ({where})")
            made = timm_counterpart(info.name, mod, shape)
            if made is None:
                raise InputError(f"timm has no counterpart of {name}")
            return made[0]

        model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                  block_args={"attn_layer": attn_layer})
        if queue:
            raise InputError(f"timm's {arch} has fewer attention slots than ours with {name}")
        return model, f"timm.create_model({arch!r}, block_args={{'attn_layer': timm's {name} module}})"
    model = copy.deepcopy(ours)
    parents = dict(model.named_modules())
    for (where, mod), shape in zip(_attn_modules(model, info.cls), shapes):
        made = timm_counterpart(info.name, mod, shape)
        if made is None:
            raise InputError(f"timm has no counterpart of {name}")
        parent, _, leaf = where.rpartition(".")
        setattr(parents[parent], leaf, made[0])
    return model, f"chanattn {arch} with each {info.cls.__name__} swapped for timm's counterpart"


class _CallFailed(Exception):
    """The callable ``name`` raised ``error`` while it was timed."""

    def __init__(self, name: str, error: BaseException) -> None:
        super().__init__(f"{name}: {error}")
        self.name, self.error = name, error


def _tagged(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        try:
            return fn()
        except Exception as exc:
            raise _CallFailed(name, exc) from exc

    return call


def _calls(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The ``infer`` and ``train`` callables of ``model`` (its parameters, its optimizer)."""
    return _task_calls(model, model, x, labels)


def _task_calls(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                labels: torch.Tensor) -> dict[str, Callable[[], object]]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def infer() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return run(x)

    def train() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), labels).backward()
        opt.step()

    return {"infer": infer, "train": train}


def bench_models(arch: str, attns: Sequence[str | None], *, batch: int | None = None, device: str = "cpu",
                 vs_timm: bool = False, compile: bool = False, compile_backend: str = "inductor",
                 repeats: int = 3, warmup: int = 1, min_time_s: float = 0.01,
                 max_call_s: float | None = None, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> list[dict[str, object]]:
    """The records of the model bench for ``arch`` with each of ``attns`` (see the module
    docstring), all timed in one interleaved run.

    Each record: model, attn, impl (``ours``/``timm``), exec (``eager``/``compiled``), backbone
    (what the overhead is relative to), impl_desc, batch, input, device, params, macs_per_image,
    infer_ms / q1 / q3 / min / max / iters, infer_img_s, the same for train, repeats,
    infer_overhead and train_overhead (fractions; where ``attns`` holds ``none``), compile_s (the
    first calls of a compiled model, compilation included, not timed) and note (why a variant
    was skipped).

    Args:
        arch: an architecture of ``chanattn.list_models()``.
        attns: module names; ``None`` or ``"none"`` is the backbone.
        batch: images per batch (default :func:`default_batch`).
        device: ``"cpu"`` or ``"cuda"``.
        vs_timm: also time timm's variants.
        compile: also time every variant under ``torch.compile``.
        compile_backend: the ``torch.compile`` backend (default ``"inductor"``).
        repeats, warmup, min_time_s, max_call_s: of :func:`.core.time_interleaved` (defaults 3,
            1, 0.01 s, no limit).
        seed: of the weights and the data (default 0).
        log: called with a line of progress (building, compiling, timing).
    """
    from ..models import create_model, model_info
    from ..registry import module_info

    say = log or (lambda _msg: None)
    info = model_info(arch)
    batch = default_batch(info.name) if batch is None else int(batch)
    dev = torch.device(device)
    names = list(dict.fromkeys("none" if a is None or str(a).strip().lower() == "none"
                               else module_info(a).name for a in attns))
    variants: list[_Variant] = []
    ours_models: dict[str, nn.Module] = {}
    backbone_ours = f"chanattn {info.name}"
    for name in names:
        torch.manual_seed(seed)
        try:
            model = create_model(info.name, attn=None if name == "none" else name)
            ours_models[name] = model
            variants.append(_Variant(name, "ours", model, backbone_ours,
                                     f"chanattn.create_model({info.name!r}, attn={name!r})"))
        except Exception as exc:  # e.g. a module that needs a channel multiple the model lacks
            variants.append(_Variant(name, "ours", None, backbone_ours, note=f"skipped: {_error_text(exc)}"))
    if vs_timm:
        from .timm_refs import TIMM_NAMES

        timm_backbone = f"timm {info.name}" if info.name in TIMM_ARCHS else backbone_ours
        for name in names:
            if name == "none":
                if info.name in TIMM_ARCHS:
                    import timm

                    torch.manual_seed(seed)
                    model = timm.create_model(info.name, pretrained=False, num_classes=info.num_classes)
                    variants.append(_Variant(name, "timm", model, timm_backbone,
                                             f"timm.create_model({info.name!r})"))
                continue
            if name not in TIMM_NAMES or module_info(name).placement != "block" or name not in ours_models:
                continue  # timm's attn_layer is one module per block on the residual branch
            torch.manual_seed(seed)
            try:
                model, desc = _timm_variant(info.name, name, ours_models[name], info.input_size,
                                            info.num_classes)
                variants.append(_Variant(name, "timm", model, timm_backbone, desc))
            except Exception as exc:  # timm's module may fail; the record says so
                variants.append(_Variant(name, "timm", None, timm_backbone,
                                         note=f"timm fails: {_error_text(exc)}"))

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *info.input_size, generator=gen).to(dev)
    labels = torch.randint(0, info.num_classes, (batch,), generator=gen).to(dev)
    static: dict[int, dict[str, object]] = {}
    for k, v in enumerate(variants):
        if v.model is None:
            continue
        try:
            v.model.to(dev)
            static[k] = {"params": count_params(v.model),
                         "macs_per_image": count_macs(v.model, (1, *info.input_size))}
            v.fns = {f"{k}|eager|{t}": fn for t, fn in _calls(v.model, x, labels).items()}
        except Exception as exc:
            v.note, v.model = f"skipped: {_error_text(exc)}", None

    stack = contextlib.ExitStack()
    with stack:
        if compile:
            stack.enter_context(compile_scope())
            for k, v in enumerate(variants):
                if v.model is None:
                    continue
                say(f"bench {info.name}: compiling {v.impl} {v.attn} (infer and train)")
                calls = _task_calls(v.model, torch.compile(v.model, backend=compile_backend), x, labels)
                t0 = time.perf_counter()
                try:
                    for fn in calls.values():  # compiles; twice, so that a recompile happens here
                        fn()
                        fn()
                except Exception as exc:  # a model that fails to compile is a note, not a crash
                    v.compile_note = f"compile fails: {_error_text(exc)}"
                    continue
                v.compile_s = time.perf_counter() - t0
                v.fns.update({f"{k}|compiled|{t}": fn for t, fn in calls.items()})
        fns = {key: _tagged(key, fn) for v in variants for key, fn in v.fns.items()}
        say(f"bench {info.name}: timing {len(fns)} callables at batch {batch}, {repeats} interleaved repeats")
        timings = {}
        while fns:  # a callable that fails or is too slow leaves the run with a note; the rest goes on
            try:
                timings = time_interleaved(fns, device=dev, repeats=repeats, warmup=warmup,
                                           min_time_s=min_time_s, max_call_s=max_call_s)
                break
            except (_CallFailed, SlowCallError) as exc:
                k, ex, task = exc.name.split("|")
                v = variants[int(k)]
                reason = _error_text(exc.error) if isinstance(exc, _CallFailed) else str(exc)
                if ex == "eager":
                    v.note = v.note or f"skipped ({task}): {reason}"
                else:
                    v.compile_note = v.compile_note or f"skipped ({task}): {reason}"
                fns = {key: fn for key, fn in fns.items() if not key.startswith(f"{k}|{ex}|")}

    records: list[dict[str, object]] = []
    order = sorted(range(len(variants)), key=lambda k: (names.index(variants[k].attn), variants[k].impl))
    for ex in EXECS if compile else EXECS[:1]:
        for k in order:  # none (ours, timm), then each module (ours, timm)
            v = variants[k]
            rec: dict[str, object] = {
                "model": info.name, "attn": v.attn, "impl": v.impl, "exec": ex, "backbone": v.backbone,
                "impl_desc": v.desc, "batch": batch, "input": "x".join(map(str, info.input_size)),
                "device": str(dev), "note": v.note,
            }
            if ex == "compiled":
                if v.compile_note:
                    _add_note(rec, v.compile_note)
                rec["compile_s"] = v.compile_s
            rec.update(static.get(k, {}))
            for task in TASKS:
                t = timings.get(f"{k}|{ex}|{task}")
                if t is not None:
                    rec.update(t.fields(f"{task}_"))
                    rec[f"{task}_img_s"] = batch / t.median_s
            if any(f"{k}|{ex}|{task}" in timings for task in TASKS):
                rec["repeats"] = repeats
            records.append(rec)
    _overheads(records)
    return records


def _overheads(records: list[dict[str, object]]) -> None:
    """Set ``{task}_overhead`` = (ms - backbone's ms) / backbone's ms on every record whose
    backbone (same ``backbone``, ``exec``, attn ``none``) was timed."""
    base = {(r["backbone"], r["exec"]): r for r in records if r["attn"] == "none"}
    for r in records:
        b = base.get((r["backbone"], r["exec"]))
        for task in TASKS:
            key = f"{task}_ms"
            if b is not None and r.get(key) is not None and b.get(key) is not None:
                r[f"{task}_overhead"] = (r[key] - b[key]) / b[key]


def bench_model(arch: str, attn: str | None, *, batch: int = 32, device: str = "cpu",
                repeats: int = 3, warmup: int = 1, min_time_s: float = 0.01,
                max_call_s: float | None = None, seed: int = 0) -> dict[str, object]:
    """One record of the model bench: ``create_model(arch, attn=attn)`` at ``batch`` images (see
    :func:`bench_models`, of which this is the one-model case: no backbone, no overhead)."""
    return bench_models(arch, [attn], batch=batch, device=device, repeats=repeats, warmup=warmup,
                        min_time_s=min_time_s, max_call_s=max_call_s, seed=seed)[0]
