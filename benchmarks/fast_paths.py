"""Every registered fast implementation against the formula in eager mode and compiled, interleaved.

    .venv/bin/python benchmarks/fast_paths.py                           # all, the bench's shapes
    .venv/bin/python benchmarks/fast_paths.py --impls cbam.native,se.matmul --repeats 9
    .venv/bin/python benchmarks/fast_paths.py --out benchmarks/results/fast_paths_cpu.txt

For each implementation of :func:`chanattn.fast.implementations`, on the module it belongs to (its
class's registry name, defaults) at the shapes of ``chanattn bench`` (32x64x56x56, 32x256x14x14,
32x512x7x7), in the modes it applies to (``infer``: eval forward under ``no_grad`` for inference
paths, the module's mode where it needs one; ``train``: train-mode forward and
``torch.autograd.grad`` of the output with a fixed random output gradient w.r.t. the input and the
parameters), three callables are timed in interleaved repeats
(:func:`chanattn.bench.core.time_interleaved`): *fast* (the implementation's ``run``), *eager* (the
formula: the module under ``chanattn.fast_paths(False)``) and *compiled* (``torch.compile`` of the
module, inductor, under ``fast_paths(False)``: the formula as the compiler fuses it). It prints
median ms and the ratios fast/eager and fast/compiled, and beside each row the 1-minute load average
(this process's own threads included) and *others*: the share of the machine's cores that other
processes kept busy while the row was timed (from /proc/stat; a row with more than a few percent
was disturbed and is worth running again).
For the training paths it also prints the bytes each saves for the backward as a multiple of the
input (``saved_tensors_hooks``, one count per storage; compiled graphs save through the same hooks).

A fast implementation is kept where it beats both the formula in eager mode and the compiled
formula (benchmarks/README.md, "Fast paths", has the decisions and the rule).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import chanattn
from chanattn.bench.core import machine_info, parse_shapes, saved_multiple, time_interleaved
from chanattn.fast import fast_paths, implementations

SHAPES = "32x64x56x56,32x256x14x14,32x512x7x7"


def _modes(impl) -> list[str]:
    return {False: ["infer"], True: ["train"], None: ["infer", "train"]}[impl.autograd]


def _cpu_busy() -> float | None:
    """Seconds of CPU time the whole machine has spent busy (all processes, /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(impl, shape: tuple[int, ...], mode: str, repeats: int) -> dict | str:
    name = impl.module.registry_name
    torch.manual_seed(0)
    m = chanattn.create(name, shape[1])
    train = mode == "train" if impl.module_mode is None else impl.module_mode == "train"
    m.train(train)
    x = torch.randn(shape)
    params = [p for p in m.parameters() if p.requires_grad]
    xg = x.clone().requires_grad_(True)
    with torch.no_grad() if mode == "infer" else torch.enable_grad():
        ok, why = impl.applies(m, xg if mode == "train" else x)
    if not ok:
        return f"does not apply: {why}"
    torch._dynamo.reset()  # one compiled module at a time: no recompilation limits reached
    compiled = torch.compile(m)

    if mode == "infer":
        def call(f):
            def run():
                with torch.no_grad():
                    return f(x)
            return run
    else:
        gout = torch.randn(shape, generator=torch.Generator().manual_seed(7))

        def call(f):
            def run():
                return torch.autograd.grad(f(xg), [xg, *params], gout)
            return run

    def formula(f):
        def run(t):
            with fast_paths(False):
                return f(t)
        return run

    fns = {"fast": call(lambda t: impl.run(m, t)), "eager": call(formula(m)),
           "compiled": call(formula(lambda t: compiled(t)))}
    t0 = time.perf_counter()
    fns["compiled"]()  # compiles
    compile_s = time.perf_counter() - t0
    busy0, own0, wall0 = _cpu_busy(), _own_cpu(), time.perf_counter()
    timing = time_interleaved(fns, repeats=repeats, warmup=2, min_time_s=0.05)
    busy1, own1, wall1 = _cpu_busy(), _own_cpu(), time.perf_counter()
    row = {k: v.median_s * 1e3 for k, v in timing.items()}
    # the share of the machine's cores that other processes kept busy while this row was timed
    row["others"] = (None if busy0 is None else
                     max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1)))
    row["compile_s"] = compile_s
    row["load"] = os.getloadavg()[0]
    if mode == "train":
        row["saved"] = {"fast": saved_multiple(m, x, lambda t: impl.run(m, t)),
                        "eager": saved_multiple(m, x, formula(m)),
                        "compiled": saved_multiple(m, x, formula(lambda t: compiled(t)))}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impls", default="all", help="comma-separated implementation names (default all)")
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    impls = implementations()
    if args.impls != "all":
        wanted = args.impls.split(",")
        unknown = sorted(set(wanted) - {i.name for i in impls})
        if unknown:
            print(f"unknown implementations: {', '.join(unknown)}", file=sys.stderr)
            return 2
        impls = [i for i in impls if i.name in wanted]
    machine = machine_info("cpu")
    lines = [f"# benchmarks/fast_paths.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"# CPU {machine['cpu']}, {args.threads} torch threads, torch {machine['torch']}, "
             f"load at start {machine['load_avg_1min']}",
             f"# {machine['native_kernels']}",
             f"# median ms over {args.repeats} interleaved repeats; fast = the implementation, eager = the "
             "formula, compiled = torch.compile (inductor) of the formula; saved = bytes saved for the "
             "backward / input bytes; load = 1-minute load average (this process included); others = "
             "share of the cores busy with other processes while the row was timed"]
    head = (f"{'implementation':<22} {'mode':<5} {'shape':<13} {'fast':>8} {'eager':>8} {'compiled':>8} "
            f"{'f/eager':>7} {'f/comp':>7} {'saved f/e/c':>16} {'load':>5} {'others':>6}")
    lines += [head, "-" * len(head)]
    out = sys.stdout
    for line in lines:
        print(line, file=out, flush=True)
    for impl in impls:
        for mode in _modes(impl):
            for shape in parse_shapes(args.shapes):
                shape_s = "x".join(map(str, shape))
                try:
                    row = measure(impl, shape, mode, args.repeats)
                except Exception as exc:  # a shape a module cannot take, a compile failure
                    row = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                if isinstance(row, str):
                    line = f"{impl.name:<22} {mode:<5} {shape_s:<13} {row}"
                else:
                    saved = row.get("saved")
                    saved_s = "" if saved is None else \
                        f"{saved['fast']:.2f}/{saved['eager']:.2f}/{saved['compiled']:.2f}"
                    line = (f"{impl.name:<22} {mode:<5} {shape_s:<13} {row['fast']:8.3f} {row['eager']:8.3f} "
                            f"{row['compiled']:8.3f} {row['fast'] / row['eager']:7.2f} "
                            f"{row['fast'] / row['compiled']:7.2f} {saved_s:>16} {row['load']:5.2f} "
                            f"{'' if row['others'] is None else format(row['others'], '6.0%')}")
                lines.append(line)
                print(line, file=out, flush=True)
    if args.out:
        from chanattn.io import write_text

        write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
