"""``chanattn bench``: the cost of attention modules (and of models with them) on this machine.

    chanattn bench --modules se,eca,cbam --shapes 32x64x56x56,32x256x14x14 --vs timm
    chanattn bench --modules se,eca,cbam --vs timm --compile       # + the formula, eager and compiled
    chanattn bench --modules all --mode train --out results.json
    chanattn bench --models resnet20,resnet50 --attn none,se,eca,cbam --vs timm --compile --out models.json
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

from ..io import atomic_open, write_json
from ..table import Column, TextTable
from ._args import UsageError, names, non_negative, positive, positive_number, stdout_line

__all__ = ["add_parser", "run", "run_bench"]

DEFAULT_SHAPES = "32x64x56x56,32x256x14x14,32x512x7x7"
MODES = ("infer", "train")  # chanattn.bench.core.MODES (checked by a test)


def _module_list(text: str) -> list[str]:
    from ..registry import list_modules, resolve_name

    out: list[str] = []
    for name in names(text, "--modules"):
        if name.lower() == "all":
            out += list_modules()
        else:
            resolve_name(name)  # the registry's one-line error for an unknown name
            out.append(name.strip().lower().replace("-", "_"))
    return list(dict.fromkeys(out))


def _model_lists(models: str, attn: str) -> tuple[list[str], list[str]]:
    from ..models import model_info
    from ..registry import resolve_name

    archs = [model_info(a).name for a in names(models, "--models")]
    attns = []
    for a in names(attn, "--attn"):
        if a.lower() != "none":
            resolve_name(a)
        attns.append(a.lower())
    return archs, attns


def _q13(prefix: str = "") -> Callable[[dict], str | None]:
    def get(r: dict) -> str | None:
        q1, q3 = r.get(f"{prefix}q1_ms"), r.get(f"{prefix}q3_ms")
        return None if q1 is None else f"{q1:.3f}-{q3:.3f}"

    return get


def _percent(key: str) -> Callable[[dict], str | None]:
    return lambda r: None if r.get(key) is None else f"{r[key] * 100:+.1f}%"


def _module_columns(mode: str, vs_timm: bool, compiled: bool = False) -> list[Column]:
    cols = [
        Column("module", "module", width=15), Column("shape", "shape", width=14),
        Column("params", "params", ",", width=10),
        Column("MMACs", spec=".4g", width=8, get=lambda r: r["macs"] / 1e6 if "macs" in r else None),
        Column("ms", "ms", ".3f", width=9),
        Column("q1-q3 ms", width=17, get=_q13()),
        Column("peak MiB", "peak_mib", ".3g", width=8),
    ]
    if mode == "train":
        cols.append(Column("saved MiB", "saved_mib", ".3g", width=9))
    cols += [Column("floor ms", "floor_ms", ".3f", width=8), Column("x floor", "floor_ratio", ".2f", width=7)]
    if vs_timm:
        cols += [Column("timm ms", "timm_ms", ".3f", width=9),
                 Column("timm xfl", "timm_floor_ratio", ".2f", width=8),
                 Column("ours/timm", "vs_timm", ".2f", width=9)]
    if compiled:
        cols += [Column("formula ms", "formula_ms", ".3f", width=10),
                 Column("compiled ms", "compiled_ms", ".3f", width=11),
                 Column("compile s", "compile_s", ".1f", width=9),
                 Column("ours/comp", "vs_compiled", ".2f", width=9)]
        if vs_timm:
            cols.append(Column("timm comp ms", "timm_compiled_ms", ".3f", width=12))
    return cols


def _model_columns(compiled: bool = False) -> list[Column]:
    cols = [
        Column("model", "model", width=10), Column("attn", "attn", width=14),
        Column("impl", "impl", width=4), Column("exec", "exec", width=8),
        Column("batch", "batch", "d", width=5), Column("params", "params", ",", width=11),
        Column("GMACs/img", spec=".3f", width=9,
               get=lambda r: r["macs_per_image"] / 1e9 if "macs_per_image" in r else None),
        Column("infer ms", "infer_ms", ".1f", width=9), Column("+infer", width=7, align=">",
                                                              get=_percent("infer_overhead")),
        Column("train ms", "train_ms", ".1f", width=9), Column("+train", width=7, align=">",
                                                              get=_percent("train_overhead")),
        Column("infer img/s", "infer_img_s", ".1f", width=11),
        Column("train img/s", "train_img_s", ".1f", width=11),
    ]
    if compiled:
        cols.append(Column("compile s", "compile_s", ".1f", width=9))
    return cols


def _start_table(out, title: list[str], cols: list[Column]) -> TextTable:
    """Print the preamble lines, a blank line, the column header and its rule; the table."""
    table = TextTable(cols, sep=" ", note_key="note")
    for line in [*title, "", *table.head()]:
        out(line)
    return table


def _preamble(machine: dict[str, object], args: argparse.Namespace, what: str) -> list[str]:
    where = f"{machine['device']}"
    if machine.get("gpu"):
        where += f" ({machine['gpu']})"
    lines = [
        f"chanattn bench {what}: {where}, CPU {machine['cpu']} ({machine['cores_usable']} usable cores, "
        f"load {machine['load_avg_1min']}), {machine['threads']} torch "
        f"thread{'s' if machine['threads'] != 1 else ''} ({machine['threads_from']}), "
        f"torch {machine['torch']}" + (f", timm {machine['timm']}" if args.vs == "timm" else ""),
        f"times: median over {args.repeats} interleaved repeats of >= {args.min_time * 1e3:g} ms each "
        f"after {args.warmup} warm-up calls; q1-q3 = quartiles of the repeats",
        f"{machine['native_kernels']} (CPU, float32 NCHW, inference)",
    ]
    if machine.get("load_warning"):
        lines.append(f"warning: {machine['load_warning']}")
    if args.compile:
        lines.append(f"compiled: torch.compile(backend={args.compile_backend!r}), interleaved with the eager "
                     "calls; compile s = the first calls (compilation included), not timed")
    return lines


def _module_notes(mode: str, cuda: bool, compiled: bool = False) -> list[str]:
    from ..bench.core import FLOOR_PASSES

    passes = FLOOR_PASSES[mode]
    floor = (f"floor = least memory traffic of a gate y = x * g(pool(x)): {passes} passes over the tensor "
             + ("(read to pool; read + write to rescale)" if mode == "infer"
                else "(forward: read to pool, read + write to rescale; backward: read dy and x for the "
                     "gate's gradient, read dy + write dx)")
             + f" = {passes / 2:g} x the time of a copy (1 read + 1 write) measured in the same run; "
               "x floor = ms / floor ms")
    mem = ("peak MiB: torch.cuda.max_memory_allocated during one call minus the memory before it" if cuda
           else "peak MiB: most bytes held at once by tensors created during one call (aten outputs), beyond "
                "the input, parameters and buffers; kernel-internal scratch not seen")
    lines = [
        "params; MMACs: forward multiply-adds of one call on the whole batch, torch.utils.flop_counter "
        "(convolutions, linear layers, matrix products; element-wise ops and pooling not counted)",
        "ms: time per call, " + ("eval forward under no_grad" if mode == "infer" else
                                 "train-mode forward + autograd.grad w.r.t. input and parameters "
                                 "with a random output gradient"),
        floor, mem,
    ]
    if mode == "train":
        lines.append("saved MiB: tensors autograd keeps for the backward, beyond the input and parameters")
    if compiled:
        lines.append("formula ms: the module's formula without its fast paths, eager; compiled ms: that "
                     "formula under torch.compile; ours/comp = ms / compiled ms; timm comp ms: timm's "
                     "module compiled")
    return lines


def _write(path: Path, payload: dict[str, object]) -> None:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise UsageError(f"--out must end in .json or .csv, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, object]] = payload["records"]  # type: ignore[assignment]
    if suffix == ".json":
        write_json(path, payload, indent=1)
        return
    machine: dict[str, object] = payload["machine"]  # type: ignore[assignment]
    extra = {k: machine[k] for k in ("cpu", "torch", "date")}
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys]
    keys += list(extra)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for rec in records:
            writer.writerow({**rec, **extra})


def run_bench(args: argparse.Namespace, out: Callable[[str], None] = print,
              err: Callable[[str], None] | None = None) -> dict[str, object]:
    """Run the bench that ``args`` asks for, print its table and return ``{machine, settings,
    records}`` (written to ``args.out`` as JSON or CSV when given); warnings and progress go to
    ``err`` (default stderr)."""
    import torch

    from ..bench.core import machine_info, parse_shapes
    from ..training import threads as _threads

    say = err or (lambda line: print(line, file=sys.stderr, flush=True))
    if (args.modules is None) == (args.models is None):
        raise UsageError("give either --modules NAMES|all (the module bench) or --models ARCHS "
                       "(the model bench)")
    if args.out is not None and Path(args.out).suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"--out must end in .json or .csv, got {args.out!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here")
    if args.vs == "timm":
        try:
            import timm.layers  # noqa: F401
        except ImportError as exc:
            raise UsageError(f"--vs timm needs timm (pip install 'chanattn[timm]'): {exc}") from exc
    # every argument is checked before anything runs (and before the load warning)
    if args.modules is not None:
        work = (_module_list(args.modules), parse_shapes(args.shapes))
    else:
        work = _model_lists(args.models, args.attn)
    threads, threads_from = _threads.pick_threads(args.threads)
    torch.set_num_threads(threads)

    modes = list(MODES) if args.mode == "both" else [args.mode]
    machine = machine_info(args.device)
    machine["threads_from"] = threads_from
    if machine.get("load_warning"):
        say(f"chanattn bench: warning: {machine['load_warning']}")
    records: list[dict[str, object]] = []
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "debug") and not callable(v)}
    try:
        _bench_all(args, work, machine, records, modes, out, say)
    except KeyboardInterrupt:  # keep what was measured (a budget's timeout sends SIGINT)
        if args.out is not None:
            payload = {"machine": machine, "settings": settings, "records": records, "interrupted": True}
            _write(Path(args.out), payload)
            say(f"chanattn bench: interrupted; wrote the {len(records)} records finished so far to "
                f"{args.out}")
        raise
    machine["threads"] = torch.get_num_threads()
    if (after := _threads.load_average()) is not None:
        machine["load_avg_1min_end"] = round(after, 2)
        out(f"1-minute load average at the end: {after:.2f} (at the start: {machine['load_avg_1min']})")
    payload = {"machine": machine, "settings": settings, "records": records}
    if args.out is not None:
        _write(Path(args.out), payload)
        out(f"wrote {len(records)} records to {args.out}")
    return payload


def _bench_all(args: argparse.Namespace, work: tuple[list, list], machine: dict[str, object],
               records: list[dict[str, object]], modes: list[str], out: Callable[[str], None],
               say: Callable[[str], None]) -> None:
    """The tables of ``args`` over ``work`` (modules and shapes, or architectures and modules),
    printed as their rows arrive; the records appended to ``records``."""
    import torch

    from ..bench.core import bench_module
    from ..bench.models import bench_models

    if args.modules is not None:
        modules, shapes = work
        for mode in modes:
            cols = _module_columns(mode, args.vs == "timm", args.compile)
            title = [*_preamble(machine, args, f"modules, mode {mode}"),
                     *_module_notes(mode, args.device == "cuda", args.compile)]
            table = _start_table(out, title, cols)
            for name in modules:
                for shape in shapes:
                    rec = bench_module(name, shape, mode=mode, device=args.device, vs_timm=args.vs == "timm",
                                       compile=args.compile, compile_backend=args.compile_backend,
                                       repeats=args.repeats, warmup=args.warmup, min_time_s=args.min_time,
                                       max_call_s=args.max_call_s, seed=args.seed)
                    rec["threads"] = torch.get_num_threads()
                    records.append(rec)
                    out(table.row(rec))
            out("")
    else:
        archs, attns = work
        cols = _model_columns(args.compile)
        title = [*_preamble(machine, args, "models"),
                 "params; GMACs/img: forward multiply-adds per image (torch.utils.flop_counter: "
                 "convolutions, linear layers, matrix products)",
                 "infer: eval forward under no_grad; train: forward, cross-entropy, backward, SGD step "
                 "(momentum); ms per batch (median), img/s = batch / median; all rows of a model are "
                 "timed in one interleaved run",
                 "+infer, +train: overhead over the backbone (attn none) of the same impl and exec = "
                 "(ms - backbone ms) / backbone ms"]
        if args.vs == "timm":
            title.append("impl timm: timm's ResNets with block_args attn_layer = timm's module with our "
                         "module's settings (timm's backbone); CIFAR ResNets: ours with timm's modules "
                         "swapped in (our backbone)")
        table = _start_table(out, title, cols)
        for arch in archs:
            for rec in bench_models(arch, attns, batch=args.batch, device=args.device,
                                    vs_timm=args.vs == "timm", compile=args.compile,
                                    compile_backend=args.compile_backend, repeats=args.repeats,
                                    warmup=args.warmup, min_time_s=args.min_time,
                                    max_call_s=args.max_call_s, seed=args.seed, log=say):
                rec["threads"] = torch.get_num_threads()
                records.append(rec)
                out(table.row(rec))
        out("")


def run(args: argparse.Namespace) -> int:
    # defaults that depend on the bench: modules are fast calls, models slow ones
    if args.repeats is None:
        args.repeats = 3 if args.models is not None else 15
    if args.warmup is None:
        args.warmup = 1 if args.models is not None else 3
    run_bench(args, out=stdout_line)
    return 0


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(
        name, parents=parents,
        help="measure modules (or models with them): params, MACs, latency, memory, vs timm",
        description="Parameters, multiply-adds, latency (median and quartiles of interleaved timed repeats), "
                    "peak memory and the memory-traffic floor of attention modules, optionally against "
                    "timm's implementations; or params, MACs and images/s of models with attention.",
    )
    p.add_argument("--modules", default=None, metavar="NAMES",
                   help="comma-separated module names, or 'all' (the module bench)")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, metavar="BxCxHxW,...",
                   help="input shapes of the module bench")
    p.add_argument("--mode", choices=(*MODES, "both"), default="infer",
                   help="infer: eval forward under no_grad; train: forward + backward")
    p.add_argument("--vs", choices=("timm",), default=None,
                   help="also measure timm's implementation where it has one, interleaved (models: "
                        "timm's ResNets with its modules)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile, interleaved: modules: the formula eager and compiled, "
                        "timm's module compiled; models: every model compiled (compile time reported, "
                        "not timed)")
    p.add_argument("--compile-backend", default="inductor", metavar="BACKEND",
                   help="the torch.compile backend of --compile")
    p.add_argument("--models", default=None, metavar="ARCHS",
                   help="comma-separated architectures (the model bench, see `chanattn models`)")
    p.add_argument("--attn", default="none,se,eca", metavar="NAMES",
                   help="attention modules put in the models, 'none' for the plain model "
                        "(default none,se,eca)")
    p.add_argument("--batch", type=positive, default=None,
                   help="batch of the model bench (default: 128 for 32x32 models, 16 for 224x224)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to measure")
    p.add_argument("--threads", type=positive, default=None,
                   help="torch CPU threads (default: the usable cores the 1-minute load average leaves "
                        "free, at most torch's default, at least 1; as train and compare); the output says "
                        "how many were used")
    p.add_argument("--repeats", type=positive, default=None,
                   help="timed repeats (default 15 for modules, 3 for models)")
    p.add_argument("--warmup", type=non_negative, default=None,
                   help="untimed calls first (default 3 for modules, 1 for models)")
    p.add_argument("--min-time", type=positive_number, default=0.01, metavar="SECONDS",
                   help="a timed repeat loops until it lasts at least this long")
    p.add_argument("--max-call-s", type=positive_number, default=10.0, metavar="SECONDS",
                   help="skip a module whose single call takes longer")
    p.add_argument("--seed", type=int, default=0, help="of inputs and weights")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write the records with the machine description: .json or .csv")
    p.set_defaults(run=run)

