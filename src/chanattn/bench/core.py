"""Measurement for ``chanattn bench``: latency, memory, parameters, multiply-adds and the
memory-traffic floor of one attention module on one input shape, or the throughput of one model.

Latency. Each callable gets ``warmup`` warm-up calls, the last of which is timed to pick ``iters``,
the number of calls one timed repeat makes so that it lasts at least ``min_time_s``; then ``repeats``
timed repeats, the callables interleaved (``ours``, ``timm``, ``copy``; the order rotates from one
repeat to the next) so that machine noise reaches all of them alike. A repeat's time / ``iters`` is
one sample of the time per call; the record keeps the median, the quartiles and the extremes of the
samples. On CUDA every timed region starts and ends with ``torch.cuda.synchronize``.

Modes. ``infer``: ``module.eval()`` under ``torch.no_grad()``. ``train``: ``module.train()``, the
forward and ``torch.autograd.grad`` of the output with a fixed random output gradient with respect
to the input and the parameters (a random gradient, not ``y.sum()``, whose gradient is a broadcast
scalar that costs no memory traffic; ``autograd.grad`` returns the gradients instead of adding them
into ``.grad``, so each call does the same work).

Memory-traffic floor. A gate ``y = x * g(pool(x))`` must at least read x once to pool it, then read
x and write y to rescale it: 3 passes over the tensor. Its backward must at least read dy and x once
for the gate's gradient (a reduction of dy * x), then read dy and write dx: 4 passes. The floor is
the time of those passes at the copy speed of the machine, measured in the same run: a copy
``buf.copy_(x)`` into a preallocated buffer is 2 passes (one read, one write), so
floor = copy time * passes / 2, i.e. 1.5 x copy for ``infer`` and 3.5 x copy for ``train``
(:data:`FLOOR_PASSES`). ``latency / floor`` says how far a module is from that bound; modules
that are not gates on their input (``sk`` is a convolution block) are far above it by design.

Compiled. With ``compile=True`` the module bench also times the module's formula (the paper's
equations, no fast path; :func:`formula_forward`) in eager mode and under ``torch.compile``, and
timm's module under ``torch.compile``, interleaved with the eager calls. Each record compiles its
own callables after ``torch._dynamo.reset()``, with recompilation past the limit an error (never a
silent fall back to eager); the first calls, which compile, are outside the timing and reported as
``compile_s``. A callable that fails to compile gives a note, not an exception.

Shared machines. :func:`machine_info` records the 1-minute load average and, when it is at or
above the usable cores, the warning of :func:`chanattn.training.threads.busy_warning` (timings then
measure the other work too); :mod:`chanattn.training.threads` holds the one rule for torch's CPU
threads of ``train``, ``compare`` and ``bench`` when none are asked for.

Memory. On CUDA: ``torch.cuda.max_memory_allocated`` during one call minus the memory allocated
before it (input, parameters and output gradient allocated beforehand). On CPU, which has no
allocator statistics: the peak of the bytes held by tensors created during the call (every aten
operation's output, followed by a ``TorchDispatchMode``, each storage counted once while it is
alive), beyond the input, the output gradient, the parameters and the buffers; scratch memory
inside a kernel is not seen. In ``train`` mode, ``saved`` is the size of the tensors that autograd
keeps for the backward (``saved_tensors_hooks``), again beyond the input and the parameters.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import ConfigError, InputError
from ..models.profile import count_macs, count_params
from ..training import threads as _threads

__all__ = [
    "COPY_PASSES",
    "FLOOR_PASSES",
    "MODES",
    "SlowCallError",
    "Timing",
    "bench_module",
    "compile_scope",
    "formula_forward",
    "machine_info",
    "parse_shapes",
    "peak_bytes",
    "saved_bytes",
    "saved_multiple",
    "saved_tensors",
    "time_interleaved",
]

MODES = ("infer", "train")
#: Passes over the tensor (reads + writes) of the least traffic of a gate, by mode.
FLOOR_PASSES = {"infer": 3, "train": 7}
#: Passes of the copy that the floor is scaled from (one read, one write).
COPY_PASSES = 2
MIB = 2 ** 20


class SlowCallError(RuntimeError):
    """One call of the callable ``name`` took ``seconds``, more than the allowed ``limit``."""

    def __init__(self, name: str, seconds: float, limit: float) -> None:
        super().__init__(f"one call takes {seconds:.1f} s (> --max-call-s {limit:g})")
        self.name, self.seconds, self.limit = name, seconds, limit


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed repeats: median, quartiles, extremes; ``iters`` calls per
    repeat."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    iters: int
    repeats: int

    @classmethod
    def from_samples(cls, samples: Sequence[float], iters: int) -> Timing:
        v = sorted(samples)
        return cls(_quantile(v, 0.5), _quantile(v, 0.25), _quantile(v, 0.75), v[0], v[-1], iters, len(v))

    def fields(self, prefix: str = "") -> dict[str, float | int]:
        """The timing as record fields in milliseconds (``{prefix}ms``, ``{prefix}q1_ms``, ...)."""
        return {f"{prefix}ms": self.median_s * 1e3, f"{prefix}q1_ms": self.q1_s * 1e3,
                f"{prefix}q3_ms": self.q3_s * 1e3, f"{prefix}min_ms": self.min_s * 1e3,
                f"{prefix}max_ms": self.max_s * 1e3, f"{prefix}iters": self.iters}


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, linear between order statistics."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_shapes(text: str, option: str = "--shapes") -> list[tuple[int, int, int, int]]:
    """Comma-separated ``BxCxHxW`` shapes as tuples.

    Raises:
        ConfigError: an item is not four positive integers joined by ``x``.
    """
    shapes = []
    for item in str(text).split(","):
        try:
            dims = tuple(int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            raise ConfigError(f"{option} expects comma-separated BxCxHxW of positive integers "
                           f"(e.g. 32x64x56x56,32x256x14x14), got {item.strip()!r}")
        shapes.append(dims)
    return shapes  # type: ignore[return-value]


def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """What the figures depend on: CPU model, cores, load (and ``load_warning``, the
    :func:`~chanattn.training.threads.busy_warning`, when it is at or above the cores), torch (and
    timm) versions, threads, device and the date."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cores_logical": os.cpu_count(),
        "cores_usable": (cores := _threads.usable_cores()),
        "load_avg_1min": None if (load := _threads.load_average()) is None else round(load, 2),
        "load_warning": _threads.busy_warning(cores, load),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        info["timm"] = metadata.version("timm")
    except metadata.PackageNotFoundError:
        info["timm"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    from ..fast import native  # builds the kernel on first use, so the figures say whether it ran

    info["native_kernels"] = native.status().describe()
    return info


def time_interleaved(fns: dict[str, Callable[[], object]], *, device: torch.device | str = "cpu",
                     repeats: int = 15, warmup: int = 3, min_time_s: float = 0.01,
                     max_call_s: float | None = None) -> dict[str, Timing]:
    """The time per call of each callable, measured in interleaved repeats.

    Args:
        fns: name -> a callable with no argument.
        device: where the work runs (CUDA is synchronised around every timed region).
        repeats: timed repeats per callable (default 15).
        warmup: warm-up calls per callable first (default 3); the last one is timed to calibrate
            the number of calls per repeat (with 0, one call is made for that).
        min_time_s: a repeat makes enough calls to last at least this long (default 0.01 s).
        max_call_s: raise :class:`SlowCallError` if the calibration call of one callable takes
            longer than this (default no limit).
    """
    if repeats < 1:
        raise InputError(f"time_interleaved: repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    iters: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(warmup - 1):
            fn()
        # The last warm-up call (or one call with warmup=0) is timed to set the count; a call
        # shorter than min_time_s is timed once more and the faster of the two is kept.
        best = math.inf
        for _ in range(2):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
            if max_call_s is not None and best > max_call_s:
                raise SlowCallError(name, best, max_call_s)
            if best >= min_time_s:
                break
        iters[name] = max(1, math.ceil(min_time_s / max(best, 1e-9)))
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = fns[name], iters[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: Timing.from_samples(samples[name], iters[name]) for name in names}


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return StorageWeakRef(t.untyped_storage()).cdata
    except (RuntimeError, NotImplementedError):  # tensors without a storage
        return None


def _keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {k for t in tensors if (k := _storage_key(t)) is not None}


class _LiveTensors(TorchDispatchMode):
    """Follows the storages that aten operations create and keeps the peak of their live bytes."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Nothing here runs under torch.compile; without this, torch wraps __torch_dispatch__ in
        # torch._disable_dynamo, whose first call imports torch._dynamo (seconds on a small CPU).
        return False

    def _sweep(self) -> None:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            ref = StorageWeakRef(storage)
            nbytes = storage.nbytes()
            if ref.cdata in self.exclude or ref.cdata in self.live or nbytes == 0:
                continue
            self.live[ref.cdata] = (ref, nbytes)
            self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def peak_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = (),
               device: torch.device | str = "cpu") -> int:
    """The peak extra memory of one call of ``fn``, in bytes.

    CUDA: ``max_memory_allocated`` during the call minus ``memory_allocated`` before it. CPU: the
    most bytes held at once by the storages that aten operations create during the call (each
    storage once; ``exclude``'s storages, which exist before the call, are not counted); memory a
    kernel uses internally is not seen.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    tracker = _LiveTensors(_keys(exclude))
    with tracker:
        fn()
    return tracker.peak


def saved_tensors(fn: Callable[[], object],
                  exclude: Iterable[torch.Tensor] = ()) -> list[tuple[tuple[int, ...], int]]:
    """What autograd saves for the backward during one call of ``fn``: one ``(shape, bytes)`` per
    storage (a view keeps its whole storage alive; the shape is that of the largest tensor saved on
    it), largest first; ``exclude``'s storages (such as the parameters) are not counted."""
    skip = _keys(exclude)
    seen: dict[int, tuple[tuple[int, ...], int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is not None and key not in skip:
            nbytes = t.untyped_storage().nbytes()
            if key not in seen or seen[key][1] < nbytes:
                seen[key] = (tuple(t.shape), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sorted(seen.values(), key=lambda item: -item[1])


def saved_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for the backward during one call of ``fn`` (each storage
    once, ``exclude``'s storages, such as the input and the parameters, not counted)."""
    return sum(nbytes for _, nbytes in saved_tensors(fn, exclude))


def saved_multiple(module: nn.Module, x: torch.Tensor, forward: Callable | None = None) -> float:
    """What one forward of ``module`` (or ``forward``) on a copy of ``x`` requiring grad saves for
    the backward, as a multiple of x's bytes: each storage once, the input included where the
    backward keeps it, the module's parameters and buffers left out (benchmarks/activations.py,
    benchmarks/fast_paths.py and the tests count this way)."""
    x = x.detach().clone().requires_grad_(True)
    items = saved_tensors(lambda: (forward or module)(x), [*module.parameters(), *module.buffers()])
    return sum(nbytes for _, nbytes in items) / (x.numel() * x.element_size())


def formula_forward(module: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                 Callable[[], contextlib.AbstractContextManager], str]:
    """How to run ``module``'s formula (the paper's equations, no fast path): ``(fn, scope, how)``,
    where ``fn(x)`` called inside ``scope()`` computes it and ``how`` says which way was taken:
    the module itself under ``chanattn.fast_paths(False)`` (every module's ``forward`` is its
    formula; the switch turns off the fast implementations of :mod:`chanattn.fast`).
    """
    from chanattn.fast import fast_paths

    return module, lambda: fast_paths(False), "chanattn.fast_paths(False)"


@contextlib.contextmanager
def compile_scope():
    """A clean ``torch.compile`` state for one measurement: ``torch._dynamo.reset()`` on entry and
    exit, and recompilation past the limit raised instead of silently falling back to eager."""
    import torch._dynamo

    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
            yield
    finally:
        torch._dynamo.reset()


@dataclass
class _Call:
    """A module's benchmark call on a fixed input, the tensors that exist before it, and the
    seconds its first calls took (for a compiled callable: compilation included)."""

    fn: Callable[[], object]
    out_shape: tuple[int, ...]
    owned: list[torch.Tensor]
    first_s: float = 0.0


def _module_call(module: nn.Module, x: torch.Tensor, mode: str, seed: int,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> _Call:
    """The callable that ``mode`` times for ``module`` on ``x`` (runs it to check it): ``forward(x)``
    (default ``module(x)``) inside ``scope()``; ``module`` gives the parameters and the mode."""
    fwd = module if forward is None else forward
    owned = [x, *module.parameters(), *module.buffers()]
    t0 = time.perf_counter()
    if mode == "infer":
        module.eval()

        def infer() -> torch.Tensor:
            with torch.no_grad(), scope():
                return fwd(x)

        shape = tuple(infer().shape)
        infer()  # a second call: a compiled callable that recompiles does it here, not in the timing
        return _Call(infer, shape, owned, time.perf_counter() - t0)
    module.train()
    xg = x.detach().requires_grad_(True)
    params = tuple(p for p in module.parameters() if p.requires_grad)
    with scope():
        y = fwd(xg)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)

    def train() -> tuple[torch.Tensor | None, ...]:
        with scope():
            out = fwd(xg)
        return torch.autograd.grad(out, (xg, *params), g, allow_unused=True)

    train()
    train()
    return _Call(train, tuple(y.shape), [*owned, g], time.perf_counter() - t0)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def _add_note(rec: dict[str, object], note: str) -> None:
    rec["note"] = f"{rec['note']}; {note}" if rec.get("note") else note


def bench_module(name: str, shape: Sequence[int], *, mode: str = "infer", device: str = "cpu",
                 vs_timm: bool = False, compile: bool = False, compile_backend: str = "inductor",
                 repeats: int = 15, warmup: int = 3, min_time_s: float = 0.01,
                 max_call_s: float | None = 10.0, seed: int = 0) -> dict[str, object]:
    """One record of the module bench: ``name`` (a registry name or alias) with its defaults on an
    input of ``shape`` = (B, C, H, W).

    Fields: module, registry_name, kind, shape, mode, device, params, macs (forward, whole batch,
    flop counter: convolutions, linear layers and matrix products only), ms / q1_ms / q3_ms /
    min_ms / max_ms / iters (per call), repeats, peak_mib, saved_mib (train), copy_ms, floor_ms,
    floor_ratio (ms / floor_ms), and with ``vs_timm`` timm_impl, timm_params, timm_ms, ...,
    timm_floor_ratio and vs_timm (ms / timm_ms, from the medians). With ``compile``: formula_impl
    (how the formula ran, :func:`formula_forward`), formula_ms, ... (the formula in eager mode),
    compiled_ms, ... (the formula under ``torch.compile``), compile_s (its first calls, compilation
    included, not timed), vs_compiled (ms / compiled_ms), and with ``vs_timm`` timm_compiled_ms, ...,
    timm_compile_s. ``note`` says why a row or a part of it was skipped (``skipped: ...``,
    ``timm fails: ...``, ``compile fails: ...``, ``timm compile fails: ...``). A module that cannot
    take the shape gives a record with only the note, not an exception.

    Args:
        name: the module.
        shape: (B, C, H, W) of the random input.
        mode: ``"infer"`` or ``"train"`` (see the module docstring).
        device: ``"cpu"`` or ``"cuda"``.
        vs_timm: also measure timm's implementation, interleaved (see :mod:`.timm_refs`).
        compile: also measure the formula (eager and compiled) and timm's module compiled.
        compile_backend: the ``torch.compile`` backend (default ``"inductor"``).
        repeats, warmup, min_time_s, max_call_s: of :func:`time_interleaved`; a module whose
            single call takes longer than ``max_call_s`` is skipped (default 10 s).
        seed: of the input and the weights (default 0).
    """
    from ..registry import module_info

    if mode not in MODES:
        raise InputError(f"bench_module: mode must be one of {MODES}, got {mode!r}")
    dev = torch.device(device)
    b, c, h, w = (int(v) for v in shape)
    info = module_info(name)
    rec: dict[str, object] = {
        "module": name, "registry_name": info.name, "kind": info.kind, "shape": f"{b}x{c}x{h}x{w}",
        "mode": mode, "device": str(dev), "note": "",
    }
    if c % info.channel_multiple:
        rec["note"] = f"skipped: needs C % {info.channel_multiple} == 0, got C = {c}"
        return rec
    if min(h, w) < info.min_size:
        rec["note"] = f"skipped: needs H, W >= {info.min_size}, got {h}x{w}"
        return rec
    torch.manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)).to(dev)
    try:
        ours = info.cls(c).to(dev)
        call = _module_call(ours, x, mode, seed)
    except Exception as exc:  # a module that cannot run on this shape is a row, not a crash
        rec["note"] = f"skipped: {_error_text(exc)}"
        return rec
    rec["params"] = count_params(ours)
    rec["macs"] = count_macs(ours, inputs=x)

    theirs, their_call = None, None
    if vs_timm:
        from .timm_refs import timm_counterpart

        rec["timm_impl"] = ""
        try:
            made = timm_counterpart(info.name, ours, (b, c, h, w))
            if made is not None:
                theirs, rec["timm_impl"] = made
                theirs = theirs.to(dev)
                their_call = _module_call(theirs, x, mode, seed)
                if their_call.out_shape != call.out_shape:
                    raise InputError(f"output {their_call.out_shape}, ours {call.out_shape}")
        except Exception as exc:  # timm's module may fail; say so in the row
            _add_note(rec, f"timm fails: {_error_text(exc)}")
            theirs, their_call = None, None
        if theirs is not None:
            rec["timm_params"] = count_params(theirs)
            rec["timm_macs"] = count_macs(theirs, inputs=x)

    rec["peak_mib"] = peak_bytes(call.fn, call.owned, dev) / MIB
    if mode == "train":
        rec["saved_mib"] = saved_bytes(call.fn, call.owned) / MIB
    if their_call is not None:
        rec["timm_peak_mib"] = peak_bytes(their_call.fn, their_call.owned, dev) / MIB
        if mode == "train":
            rec["timm_saved_mib"] = saved_bytes(their_call.fn, their_call.owned) / MIB

    buf = torch.empty_like(x)
    fns: dict[str, Callable[[], object]] = {"ours": call.fn}
    if their_call is not None:
        fns["timm"] = their_call.fn
    with contextlib.ExitStack() as stack:
        if compile:
            stack.enter_context(compile_scope())
            _add_compiled(fns, rec, ours, theirs if their_call is not None else None, x, mode, seed,
                          compile_backend, call.out_shape)
        fns["copy"] = lambda: buf.copy_(x)
        kw = dict(device=dev, repeats=repeats, warmup=warmup, min_time_s=min_time_s, max_call_s=max_call_s)
        while True:
            try:
                timings = time_interleaved(fns, **kw)
                break
            except SlowCallError as exc:
                if exc.name in ("ours", "copy"):
                    rec["note"] = f"skipped: {exc}"
                    return rec
                _add_note(rec, f"{exc.name} skipped: {exc}")
                del fns[exc.name]
    rec.update(timings["ours"].fields())
    rec["repeats"] = repeats
    copy = timings["copy"].median_s
    floor = copy * FLOOR_PASSES[mode] / COPY_PASSES
    rec["copy_ms"] = copy * 1e3
    rec["floor_ms"] = floor * 1e3
    rec["floor_ratio"] = timings["ours"].median_s / floor
    if "timm" in timings:
        rec.update(timings["timm"].fields("timm_"))
        rec["timm_floor_ratio"] = timings["timm"].median_s / floor
        rec["vs_timm"] = timings["ours"].median_s / timings["timm"].median_s
    for key in ("formula", "compiled", "timm_compiled"):
        if key in timings:
            rec.update(timings[key].fields(f"{key}_"))
    if "compiled" in timings:
        rec["vs_compiled"] = timings["ours"].median_s / timings["compiled"].median_s
    return rec


def _add_compiled(fns: dict[str, Callable[[], object]], rec: dict[str, object], ours: nn.Module,
                  theirs: nn.Module | None, x: torch.Tensor, mode: str, seed: int, backend: str,
                  out_shape: tuple[int, ...]) -> None:
    """Add the formula (eager and compiled) and timm's compiled module to ``fns``; failures are
    notes in ``rec``."""
    fn, scope, rec["formula_impl"] = formula_forward(ours)
    try:
        fns["formula"] = _module_call(ours, x, mode, seed, fn, scope).fn
    except Exception as exc:
        _add_note(rec, f"formula fails: {_error_text(exc)}")
        return
    try:
        compiled = _module_call(ours, x, mode, seed, torch.compile(fn, backend=backend), scope)
        if compiled.out_shape != out_shape:
            raise InputError(f"output {compiled.out_shape}, eager {out_shape}")
        fns["compiled"] = compiled.fn
        rec["compile_s"] = compiled.first_s
    except Exception as exc:  # inductor may not handle a module: a note, not a crash
        _add_note(rec, f"compile fails: {_error_text(exc)}")
    if theirs is None:
        return
    try:
        compiled = _module_call(theirs, x, mode, seed, torch.compile(theirs, backend=backend))
        fns["timm_compiled"] = compiled.fn
        rec["timm_compile_s"] = compiled.first_s
    except Exception as exc:
        _add_note(rec, f"timm compile fails: {_error_text(exc)}")
