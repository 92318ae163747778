"""What every registered module saves for backward in a training forward, as multiples of the
input's size; writes benchmarks/ACTIVATIONS.md.

    .venv/bin/python benchmarks/activations.py            # writes benchmarks/ACTIVATIONS.md
    .venv/bin/python benchmarks/activations.py --stdout   # prints the table instead

Measured with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd packs during
one forward in training mode (input requiring grad) is counted once per storage (a view keeps its
whole storage alive), leaving out the module's parameters and buffers. The input itself counts
where the backward keeps it (1.0 of the total). Memory only: nothing here is timed, and the figures
do not depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import chanattn
from chanattn.bench.core import saved_tensors

SHAPES = [(8, 64, 28, 28), (8, 256, 14, 14)]
OUT = Path(__file__).with_name("ACTIVATIONS.md")

# Hand-written notes for the modules with a fast path (src/chanattn/fast/); the others get
# the largest saved tensors from the hook.
NOTES = {
    "se": "x and the (B, C, 1, 1) gate (for y = x * g); the MLP's (B, C) vectors",
    "se_var1": "x and the gate",
    "se_var2": "x and the gate",
    "se_var3": "x and the gate (eSE with `gate_layer=\"hard_sigmoid\"`)",
    "rcan_ca": "x and the gate (SE's code)",
    "eca": "x and the gate; the (B, C) pooled vector for the 1-D convolution",
    "cbam_channel": "x, the (B, C) maxima (for amax's backward) and the gate",
    "cbam_spatial": "x, the (B, 2, H, W) pooled map (the max's positions are recomputed from it) "
                    "and the (B, 1, H, W) gate",
    "sk": "x and, per branch, only the convolution's output (BN and ReLU run again in the backward, "
          "bit for bit; the weighted sum saves only the weights); stride 1, so each is x's size",
    "encnet": "x, the first conv-BN-ReLU's output (also the Encoding's input; its 1x1 convolution runs "
              "again in the backward), the (B, H*W, K) distances and assignments (K/C each); not the "
              "folded copy of the Encoding's input, not the final ReLU's output",
    "gsop": "x, BN's per-channel mean/invstd and, where it is no larger than x (c'H'W' <= CHW, e.g. "
            "8x256x14x14), the 1x1 conv's output (an autograd Function recomputes ReLU(x), the conv "
            "where not kept, BN, ReLU and the centred matrix in the backward); the (B, c', c') "
            "covariance (row BN's input) and row BN's output (the row-wise conv's input)",
    "c3": "the output (the final ReLU's), the encoder's input, the encodings f, the message (the "
          "decoder's input), (B*G, C/G, A) each, and the MLPs' hidden activations; no (C/G x C/G) "
          "matrix (scores and softmax recomputed from f in the backward) and not the area resampling's "
          "input (its backward needs only the shape)",
}


def _input_size(name: str, wanted: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    info = chanattn.module_info(name)
    b, c, h, w = wanted
    c = -(-c // info.channel_multiple) * info.channel_multiple
    return b, c, max(h, info.min_size), max(w, info.min_size)


def saved_for_backward(module: torch.nn.Module, x: torch.Tensor,
                       forward=None) -> tuple[float, list[tuple[tuple[int, ...], float]]]:
    """(total, largest): the bytes saved for backward by one training forward of ``module`` on
    ``x`` as a multiple of x's bytes, and the (shape, multiple) of each distinct saved storage,
    largest first (:func:`chanattn.bench.core.saved_tensors`)."""
    x = x.detach().clone().requires_grad_(True)
    unit = x.numel() * x.element_size()
    found = saved_tensors(lambda: (forward or module)(x), [*module.parameters(), *module.buffers()])
    items = [(shape, n / unit) for shape, n in found]
    return sum(m for _, m in items), items


def _largest(items: list[tuple[tuple[int, ...], float]], k: int = 3) -> str:
    parts = [f"{'x'.join(map(str, shape)) or 'scalar'} ({m:.2f})" for shape, m in items[:k] if m >= 0.005]
    rest = sum(m for _, m in items[k:])
    if rest >= 0.005:
        parts.append(f"+{rest:.2f} in {len(items) - k} more")
    return "; ".join(parts) if parts else "only small tensors"


def formula(m: torch.nn.Module):
    """``m`` with every fast implementation off."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with chanattn.fast_paths(False):
            return m(x)
    return run


def measure(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        row: dict = {"name": name, "saved": [], "reference": [], "largest": []}
        for shape in SHAPES:
            b, c, h, w = _input_size(name, shape)
            torch.manual_seed(0)
            m = chanattn.create(name, c).train()
            x = torch.randn(b, c, h, w)
            total, items = saved_for_backward(m, x)
            row["saved"].append(total)
            row["largest"].append(items)
            with torch.enable_grad():
                fast = chanattn.explain(m, x.detach().requires_grad_(True)).chosen != "formula"
            row["reference"].append(saved_for_backward(m, x, formula(m))[0] if fast else None)
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    heads = [f"{b}x{c}x{h}x{w}" for b, c, h, w in SHAPES]
    lines = [
        "# Activations saved for backward",
        "",
        "Written by `benchmarks/activations.py` (do not edit by hand). For every registered module:",
        "the bytes autograd saves in one training forward (training mode, input requiring grad),",
        "one count per storage, parameters and buffers left out, as multiples of the input's size",
        f"(inputs {' and '.join(heads)}, channels rounded up to what each module accepts). The input",
        "itself is part of the figure where the backward keeps it (1.00). *reference*: the same module",
        "running its formula (`chanattn.fast_paths(False)`), where training takes a fast path",
        "(`chanattn.explain`; the two shapes). For the others, the largest saved tensors: shape",
        "(multiple of the input).",
        "",
        f"| module | saved ({heads[0]}) | saved ({heads[1]}) | reference | what it saves |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ref = row["reference"][0]
        ref_text = "" if ref is None else f"{ref:.2f} / {row['reference'][1]:.2f}"
        # the largest saved tensors at the shape where the module saves the most
        at = max(range(len(SHAPES)), key=lambda i: row["saved"][i])
        note = NOTES.get(row["name"], f"at {heads[at]}: {_largest(row['largest'][at])}")
        saved = " | ".join(f"{v:.2f}" for v in row["saved"])
        lines.append(f"| {row['name']} | {saved} | {ref_text} | {note} |")
    heavy = [r for r in rows if max(r["saved"]) > 3]
    if heavy:
        lines += ["", "Above 3 input sizes: " + ", ".join(
            f"{r['name']} ({max(r['saved']):.1f})" for r in heavy) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stdout", action="store_true", help="print the table instead of writing it")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    parser.add_argument("modules", nargs="*", help="registered names (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.modules or chanattn.list_modules()
    text = render(measure(names))
    if args.stdout:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
