"""``chanattn bench``: the cost of attention modules (and of models with them) on this machine.

    chanattn bench --modules se,eca,cbam --shapes 32x64x56x56,32x256x14x14 --vs timm
    chanattn bench --modules all --mode train --out results.json
    chanattn bench --models resnet20,resnet50 --attn none,se,eca --batch 8 --out models.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

from ..errors import CLIError
from .core import FLOOR_PASSES, MODES, bench_model, bench_module, machine_info, parse_shapes

__all__ = ["add_parsers", "run_bench"]

DEFAULT_SHAPES = "32x64x56x56,32x256x14x14,32x512x7x7"


def _names(text: str, option: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise CLIError(f"{option} expects comma-separated names, got {text!r}")
    return names


def _positive(option: str, value: float | None, integer: bool = True) -> None:
    if value is not None and (value <= 0 or (integer and int(value) != value)):
        kind = "a positive int" if integer else "a positive number"
        raise CLIError(f"{option} must be {kind}, got {value}")


def _module_list(text: str) -> list[str]:
    from ..registry import list_modules, resolve_name

    names: list[str] = []
    for name in _names(text, "--modules"):
        if name.lower() == "all":
            names += list_modules()
        else:
            resolve_name(name)  # the registry's one-line error for an unknown name
            names.append(name.strip().lower().replace("-", "_"))
    return list(dict.fromkeys(names))


def _model_lists(models: str, attn: str) -> tuple[list[str], list[str]]:
    from ..models import model_info
    from ..registry import resolve_name

    archs = [model_info(a).name for a in _names(models, "--models")]
    attns = []
    for a in _names(attn, "--attn"):
        if a.lower() != "none":
            resolve_name(a)
        attns.append(a.lower())
    return archs, attns


def _fmt(value: object, spec: str) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


Column = tuple[str, str, str, int]  # header, record key, format, width


def _module_columns(mode: str, vs_timm: bool) -> list[Column]:
    cols: list[Column] = [
        ("module", "module", "", 15), ("shape", "shape", "", 14), ("params", "params", ",", 10),
        ("MMACs", "mmacs", ".4g", 8), ("ms", "ms", ".3f", 9), ("q1-q3 ms", "iqr", "", 17),
        ("peak MiB", "peak_mib", ".3g", 8),
    ]
    if mode == "train":
        cols.append(("saved MiB", "saved_mib", ".3g", 9))
    cols += [("floor ms", "floor_ms", ".3f", 8), ("x floor", "floor_ratio", ".2f", 7)]
    if vs_timm:
        cols += [("timm ms", "timm_ms", ".3f", 9), ("timm xfl", "timm_floor_ratio", ".2f", 8),
                 ("ours/timm", "vs_timm", ".2f", 9)]
    return cols


def _model_columns() -> list[Column]:
    return [
        ("model", "model", "", 12), ("attn", "attn", "", 14), ("batch", "batch", "d", 5),
        ("params", "params", ",", 11), ("GMACs/img", "gmacs", ".3f", 9),
        ("infer ms", "infer_ms", ".1f", 9), ("infer img/s", "infer_img_s", ".1f", 11),
        ("train ms", "train_ms", ".1f", 9), ("train img/s", "train_img_s", ".1f", 11),
    ]


def _row(rec: dict[str, object], cols: list[Column]) -> str:
    view = dict(rec)
    if "macs" in rec:
        view["mmacs"] = rec["macs"] / 1e6  # type: ignore[operator]
    if "macs_per_image" in rec:
        view["gmacs"] = rec["macs_per_image"] / 1e9  # type: ignore[operator]
    if "q1_ms" in rec:
        view["iqr"] = f"{rec['q1_ms']:.3f}-{rec['q3_ms']:.3f}"
    cells = []
    for _, key, spec, width in cols:
        text = _fmt(view.get(key), spec)
        cells.append(text.ljust(width) if spec == "" else text.rjust(width))
    line = " ".join(cells)
    return f"{line}  {rec['note']}" if rec.get("note") else line


def _header(cols: list[Column]) -> str:
    return " ".join(h.ljust(w) if spec == "" else h.rjust(w) for h, _, spec, w in cols) + "  note"


def _print_head(out, title: list[str], cols: list[Column]) -> None:
    """The preamble lines, a blank line, the column header and its rule."""
    for line in title:
        out(line)
    out("")
    out(_header(cols))
    out("-" * len(_header(cols)))


def _preamble(machine: dict[str, object], args: argparse.Namespace, what: str) -> list[str]:
    where = f"{machine['device']}"
    if machine.get("gpu"):
        where += f" ({machine['gpu']})"
    lines = [
        f"chanattn bench {what}: {where}, CPU {machine['cpu']} ({machine['cores_usable']} usable cores, "
        f"load {machine['load_avg_1min']}), {machine['threads']} torch threads, torch {machine['torch']}"
        + (f", timm {machine['timm']}" if args.vs == "timm" else ""),
        f"times: median over {args.repeats} interleaved repeats of >= {args.min_time * 1e3:g} ms each "
        f"after {args.warmup} warm-up calls; q1-q3 = quartiles of the repeats",
        f"{machine['native_kernels']} (CPU, float32 NCHW, inference)",
    ]
    return lines


def _module_notes(mode: str, cuda: bool) -> list[str]:
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
    return lines


def _write(path: Path, payload: dict[str, object]) -> None:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise CLIError(f"--out must end in .json or .csv, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, object]] = payload["records"]  # type: ignore[assignment]
    if suffix == ".json":
        path.write_text(json.dumps(payload, indent=1) + "\n")
        return
    machine: dict[str, object] = payload["machine"]  # type: ignore[assignment]
    extra = {k: machine[k] for k in ("cpu", "torch", "date")}
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys]
    keys += list(extra)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for rec in records:
            writer.writerow({**rec, **extra})


def run_bench(args: argparse.Namespace, out: Callable[[str], None] = print) -> dict[str, object]:
    """Run the bench that ``args`` asks for, print its table and return ``{machine, settings,
    records}`` (written to ``args.out`` as JSON or CSV when given)."""
    import torch

    if (args.modules is None) == (args.models is None):
        raise CLIError("give either --modules NAMES|all (the module bench) or --models ARCHS "
                       "(the model bench)")
    _positive("--repeats", args.repeats)
    _positive("--threads", args.threads)
    _positive("--batch", args.batch)
    _positive("--min-time", args.min_time, integer=False)
    _positive("--max-call-s", args.max_call_s, integer=False)
    if args.warmup < 0:
        raise CLIError(f"--warmup must be >= 0, got {args.warmup}")
    if args.out is not None and Path(args.out).suffix.lower() not in (".json", ".csv"):
        raise CLIError(f"--out must end in .json or .csv, got {args.out!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: CUDA is not available here")
    if args.vs == "timm":
        if args.models is not None:
            raise CLIError("--vs timm applies to the module bench (--modules), not to --models")
        try:
            import timm.layers  # noqa: F401
        except ImportError as exc:
            raise CLIError(f"--vs timm needs timm (pip install 'chanattn[timm]'): {exc}") from exc
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    modes = list(MODES) if args.mode == "both" else [args.mode]
    machine = machine_info(args.device)
    records: list[dict[str, object]] = []
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "debug") and not callable(v)}
    if args.modules is not None:
        names = _module_list(args.modules)
        shapes = parse_shapes(args.shapes)
        for mode in modes:
            cols = _module_columns(mode, args.vs == "timm")
            title = [*_preamble(machine, args, f"modules, mode {mode}"),
                     *_module_notes(mode, args.device == "cuda")]
            _print_head(out, title, cols)
            for name in names:
                for shape in shapes:
                    rec = bench_module(name, shape, mode=mode, device=args.device, vs_timm=args.vs == "timm",
                                       repeats=args.repeats, warmup=args.warmup, min_time_s=args.min_time,
                                       max_call_s=args.max_call_s, seed=args.seed)
                    rec["threads"] = torch.get_num_threads()
                    records.append(rec)
                    out(_row(rec, cols))
            out("")
    else:
        archs, attns = _model_lists(args.models, args.attn)
        cols = _model_columns()
        title = [*_preamble(machine, args, "models"),
                 "params; GMACs/img: forward multiply-adds per image (torch.utils.flop_counter: "
                 "convolutions, linear layers, matrix products)",
                 "infer: eval forward under no_grad; train: forward, cross-entropy, backward, SGD step "
                 "(momentum); ms per batch (median), img/s = batch / median"]
        _print_head(out, title, cols)
        for arch in archs:
            for attn in attns:
                rec = bench_model(arch, attn, batch=args.batch, device=args.device, repeats=args.repeats,
                                  warmup=args.warmup, min_time_s=args.min_time,
                                  max_call_s=args.max_call_s, seed=args.seed)
                rec["threads"] = torch.get_num_threads()
                records.append(rec)
                out(_row(rec, cols))
        out("")
    machine["threads"] = torch.get_num_threads()
    payload = {"machine": machine, "settings": settings, "records": records}
    if args.out is not None:
        _write(Path(args.out), payload)
        out(f"wrote {len(records)} records to {args.out}")
    return payload


def _cmd_bench(args: argparse.Namespace) -> int:
    # defaults that depend on the bench: modules are fast calls, models slow ones
    if args.repeats is None:
        args.repeats = 3 if args.models is not None else 15
    if args.warmup is None:
        args.warmup = 1 if args.models is not None else 3
    run_bench(args, out=lambda line: print(line, flush=True))
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``chanattn bench`` to the CLI."""
    p = subparsers.add_parser(
        "bench", help="measure modules (or models with them): params, MACs, latency, memory, vs timm",
        description="Parameters, multiply-adds, latency (median and quartiles of interleaved timed repeats), "
                    "peak memory and the memory-traffic floor of attention modules, optionally against "
                    "timm's implementations; or params, MACs and images/s of models with attention.",
    )
    p.add_argument("--modules", default=None, metavar="NAMES",
                   help="comma-separated module names, or 'all' (the module bench)")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, metavar="BxCxHxW,...",
                   help=f"input shapes of the module bench (default {DEFAULT_SHAPES})")
    p.add_argument("--mode", choices=(*MODES, "both"), default="infer",
                   help="infer: eval forward under no_grad; train: forward + backward (default infer)")
    p.add_argument("--vs", choices=("timm",), default=None,
                   help="also measure timm's implementation where it has one, interleaved")
    p.add_argument("--models", default=None, metavar="ARCHS",
                   help="comma-separated architectures (the model bench, see `chanattn models`)")
    p.add_argument("--attn", default="none,se,eca", metavar="NAMES",
                   help="attention modules put in the models, 'none' for the plain model "
                        "(default none,se,eca)")
    p.add_argument("--batch", type=int, default=32, help="batch of the model bench (default 32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's default); the output says how many were used")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats (default 15 for modules, 3 for models)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls first (default 3 for modules, 1 for models)")
    p.add_argument("--min-time", type=float, default=0.01, metavar="SECONDS",
                   help="a timed repeat loops until it lasts at least this long (default 0.01)")
    p.add_argument("--max-call-s", type=float, default=10.0, metavar="SECONDS",
                   help="skip a module whose single call takes longer (default 10)")
    p.add_argument("--seed", type=int, default=0, help="of inputs and weights (default 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write the records with the machine description: .json or .csv")
    p.set_defaults(func=_cmd_bench)

