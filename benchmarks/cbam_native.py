"""CBAM inference: the native kernel against chanattn's PyTorch path and timm, interleaved.

    .venv/bin/python benchmarks/cbam_native.py                     # the issue's three shapes
    .venv/bin/python benchmarks/cbam_native.py --threads 1 --repeats 30
    .venv/bin/python benchmarks/cbam_native.py --shapes 8x64x56x56 --modules cbam

For each module (cbam, cbam_channel, cbam_spatial) and shape: eval forward under ``no_grad`` of
the same module instance (a) with the native kernel (``chanattn.native``), (b) with it switched
off (the PyTorch fast path of ``chanattn.functional``, what ran before the kernel), (c) timm's
module built with the same hyper-parameters and weights (``chanattn.bench.timm_refs``), and (d) a
copy of the input into a preallocated buffer; all four timed in interleaved repeats
(``chanattn.bench.core.time_interleaved``). Prints median ms and the ratios native/timm,
pytorch/timm, native/pytorch.
"""

from __future__ import annotations

import argparse
import sys

import torch

import chanattn
import chanattn.modules.cbam as cbam_module
from chanattn import native
from chanattn.bench.core import machine_info, parse_shapes, time_interleaved
from chanattn.bench.timm_refs import timm_counterpart


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
    head = (f"{'module':<13} {'shape':<14} {'native':>8} {'pytorch':>8} {'timm':>8} {'copy':>7}"
            f" {'nat/timm':>9} {'pt/timm':>8} {'nat/pt':>7}")
    print(head)
    print("-" * len(head))
    kernel = cbam_module.cbam_forward
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

            def pytorch_path(m=m, x=x):
                cbam_module.cbam_forward = lambda *a, **k: None
                try:
                    return m(x)
                finally:
                    cbam_module.cbam_forward = kernel

            with torch.no_grad():
                torch.testing.assert_close(m(x), pytorch_path(), rtol=1e-4, atol=1e-4)
                t = time_interleaved({
                    "native": lambda m=m, x=x: m(x),
                    "pytorch": pytorch_path,
                    "timm": lambda theirs=theirs, x=x: theirs(x),
                    "copy": lambda x=x, buf=buf: buf.copy_(x),
                }, repeats=args.repeats)
            ms = {k: v.median_s * 1e3 for k, v in t.items()}
            print(f"{name:<13} {'x'.join(map(str, shape)):<14} {ms['native']:8.3f} {ms['pytorch']:8.3f}"
                  f" {ms['timm']:8.3f} {ms['copy']:7.3f} {ms['native'] / ms['timm']:9.2f}"
                  f" {ms['pytorch'] / ms['timm']:8.2f} {ms['native'] / ms['pytorch']:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
