"""What attention costs in a whole network: the training-step and inference overhead of each module
over its backbone, ours against timm's, eager and compiled, every variant of a model interleaved
in one run (``chanattn bench --models ... --vs timm --compile``, see chanattn.bench.models).

    .venv/bin/python benchmarks/model_overhead.py                        # CPU: resnet20 b128, resnet50 b16
    .venv/bin/python benchmarks/model_overhead.py --models resnet20 --no-compile
    .venv/bin/python benchmarks/model_overhead.py --device cuda --repeats 20

Writes OUT_DIR/model_overhead_<device>.json (every record, the machine) and .txt (the table).
The batch is the bench's per-model default: 128 for the 32x32 CIFAR ResNets, 16 for the 224x224
ImageNet ones. Run time on the 2-core CPU of benchmarks/README.md: see there.
"""

from __future__ import annotations

import argparse
import os
import sys

from chanattn.cli import build_parser
from chanattn.cli.bench import run_bench
from chanattn.io import write_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--models", default="resnet20,resnet50")
    p.add_argument("--attn", default="none,se,eca,cbam")
    p.add_argument("--batch", default=None, help="default: 128 for 32x32 models, 16 for 224x224")
    p.add_argument("--repeats", default="3", help="interleaved timed repeats (default 3)")
    p.add_argument("--warmup", default="1")
    p.add_argument("--threads", default=None)
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"model_overhead_{args.device}")
    bench = ["bench", "--models", args.models, "--attn", args.attn, "--vs", "timm", "--device", args.device,
             "--repeats", args.repeats, "--warmup", args.warmup, "--compile-backend", args.compile_backend,
             "--out", f"{stem}.json"]
    bench += [] if args.no_compile else ["--compile"]
    bench += [] if args.batch is None else ["--batch", args.batch]
    bench += [] if args.threads is None else ["--threads", args.threads]
    bench_args = build_parser().parse_args(bench)
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        run_bench(bench_args, out=out, err=lambda line: print(line, file=sys.stderr, flush=True))
    finally:  # also the rows printed before an interruption
        write_text(f"{stem}.txt", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
