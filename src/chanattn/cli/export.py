"""``chanattn export``: one module or model to torch.export, ONNX or TorchScript, checked against
eager mode; ``--record FILE`` re-runs every module and model along every path."""

from __future__ import annotations

import argparse

from ..export.formats import FORMATS, normalise_format
from ._args import UsageError, parse_shape, positive


def _format(text: str) -> str:
    try:
        return normalise_format(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(FORMATS)}, got {text!r}") from None


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(
        name, parents=parents,
        help="export a module or a model (torch.export, ONNX, TorchScript), checked against eager",
        description="Export one attention module or model in eval mode and check the artifact against "
                    "eager mode (onnxruntime for ONNX). --record FILE re-runs every module and model "
                    "along every path and writes the results table.")
    p.add_argument("--module", default=None, help="a registered module name (chanattn list)")
    p.add_argument("--arch", default=None, help="an architecture (chanattn models)")
    p.add_argument("--attn", default=None, help="with --arch: the attention module in it")
    p.add_argument("--num-classes", type=positive, default=None, help="with --arch: classes of the head")
    p.add_argument("--format", default="onnx", type=_format, metavar="{" + ",".join(FORMATS) + "}",
                   help="the export path")
    p.add_argument("--out", default=None, help="the file to write (.onnx, .pt2, .pt)")
    p.add_argument("--shape", default=None,
                   help="example input BxCxHxW (default 1xCx14x14 for a module, the architecture's size "
                        "for a model); H and W are fixed in the export, the batch is dynamic")
    p.add_argument("--channels", type=positive, default=None, help="with --module: C (default 64)")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="run every module and model along every path and write the results (JSON)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import export_model, export_module, record

    if args.record is not None:
        if args.module or args.arch:
            raise UsageError("--record runs every module and model; leave out --module and --arch")
        record(args.record)
        print(f"chanattn export: wrote {args.record}")
        return 0
    if bool(args.module) == bool(args.arch):
        raise UsageError("give one of --module NAME or --arch NAME (or --record FILE)")
    if args.out is None:
        raise UsageError("--out FILE is required")
    g = torch.Generator().manual_seed(0)
    if args.module:
        if args.attn is not None:
            raise UsageError("--attn goes with --arch, not --module")
        if args.shape is not None:
            b, c, h, w = parse_shape(args.shape)
            if args.channels is not None and args.channels != c:
                raise UsageError(f"--channels {args.channels} disagrees with --shape {args.shape}")
        else:
            c = args.channels if args.channels is not None else 64
            b, h, w = 1, 14, 14
        result = export_module(args.module, torch.randn(b, c, h, w, generator=g), args.out, args.format)
    else:
        from ..models import model_info

        if args.channels is not None:
            raise UsageError("--channels goes with --module; a model's input is set by --shape")
        shape = parse_shape(args.shape) if args.shape is not None else (1, *model_info(args.arch).input_size)
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        result = export_model(args.arch, torch.randn(*shape, generator=g), args.out, args.format,
                              attn=args.attn, in_chans=shape[1], **kwargs)
    batch = "dynamic batch" if result.dynamic_batch else "fixed batch"
    print(f"chanattn export: {result.target} -> {result.path} ({result.fmt} via {result.via}, {batch}; "
          f"max |exported - eager| = {result.max_abs_diff:.2g} at batch sizes "
          f"{', '.join(map(str, result.checked_batches))})")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
