"""CBAM inference: the native kernel against chanattn's PyTorch path and timm, interleaved.

    .venv/bin/python benchmarks/cbam_native.py                     # the issue's three shapes
    .venv/bin/python benchmarks/cbam_native.py --threads 1 --repeats 30
    .venv/bin/python benchmarks/cbam_native.py --shapes 8x64x56x56 --modules cbam

For each module (cbam, cbam_channel, cbam_spatial) and shape: eval forward under ``no_grad`` of
the same module instance (a) by the native operator (the ``<module>.native`` implementation of
``chanattn.fast``), (b) by its formula (``chanattn.fast_paths(False)``), (c) timm's module built
with the same hyper-parameters and weights (``chanattn.bench.timm_refs``), and (d) a copy of the
input into a preallocated buffer; all four timed in interleaved repeats
(``chanattn.bench.core.time_interleaved``). Prints median ms and the ratios native/timm,
formula/timm, native/formula. (The comparison with the compiled formula:
``benchmarks/fast_paths.py``.)
"""

from __future__ import annotations

import argparse
import sys

import torch

import chanattn
from chanattn.bench.core import machine_info, parse_shapes, time_interleaved
from chanattn.bench.timm_refs import timm_counterpart
from chanattn.fast import fast_paths, implementations, native
from chanattn.table import Column, TextTable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", default="cbam,cbam_channel,cbam_spatial")
    p.add_argument("--shapes", default="32x64x56x56,32x256x14x14,32x512x7x7")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info("cpu")
    print(f"CPU {machine['cpu']}, {machine['threads']} torch threads, torch {machine['torch']}, "
          f"timm {machine['timm']}, load {machine['load_avg_1min']}")
    print(machine["native_kernels"])
    if not native.status().available:
        print("the native kernel is not in use: nothing to compare", file=sys.stderr)
        return 1
    print(f"median ms over {args.repeats} interleaved repeats (eval, no_grad)")
    table = TextTable([Column("module", "module", width=13), Column("shape", "shape", width=14),
                       *(Column(k, k, ".3f", width=8) for k in ("native", "formula", "timm")),
                       Column("copy", "copy", ".3f", width=7),
                       *(Column(k, k, ".2f", width=w)
                         for k, w in (("nat/timm", 9), ("fo/timm", 8), ("nat/fo", 7)))])
    print("\n".join(table.head()))
    kernels = {impl.name: impl for impl in implementations() if impl.name.endswith(".native")}
    for name in args.modules.split(","):
        for shape in parse_shapes(args.shapes):
            torch.manual_seed(0)
            m = chanattn.create(name, shape[1]).eval()
            ref = timm_counterpart(name, m, shape)
            if ref is None:
                print(f"{name}: timm has no counterpart", file=sys.stderr)
                continue
            theirs = ref[0].eval()
            x = torch.randn(shape)
            buf = torch.empty_like(x)

            kernel = kernels[f"{name}.native"]

            def formula(m=m, x=x):
                with fast_paths(False):
                    return m(x)

            with torch.no_grad():
                assert kernel.applies(m, x)[0], kernel.applies(m, x)[1]
                torch.testing.assert_close(kernel.run(m, x), formula(), rtol=1e-4, atol=1e-4)
                t = time_interleaved({
                    "native": lambda m=m, x=x, kernel=kernel: kernel.run(m, x),
                    "formula": formula,
                    "timm": lambda theirs=theirs, x=x: theirs(x),
                    "copy": lambda x=x, buf=buf: buf.copy_(x),
                }, repeats=args.repeats)
            ms = {k: v.median_s * 1e3 for k, v in t.items()}
            print(table.row({"module": name, "shape": "x".join(map(str, shape)), **ms,
                             "nat/timm": ms["native"] / ms["timm"], "fo/timm": ms["formula"] / ms["timm"],
                             "nat/fo": ms["native"] / ms["formula"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
