"""``chanattn export``: one module or model to torch.export, ONNX or TorchScript, checked against
eager mode; ``--record FILE`` re-runs every module and model along every path."""

from __future__ import annotations

import argparse

from ..export.formats import FORMATS, normalise_format
from ._args import UsageError, parse_shape, positive


def _format(text: str) -> str:
    if text.strip().lower() == "safetensors":
        return "safetensors"
    try:
        return normalise_format(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(FORMATS)} or safetensors "
                                         f"(with --checkpoint), got {text!r}") from None


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(
        name, parents=parents,
        help="export a module or a model (torch.export, ONNX, TorchScript), checked against eager",
        description="Export one attention module or model in eval mode and check the artifact against "
                    "eager mode (onnxruntime for ONNX). --record FILE re-runs every module and model "
                    "along every path and writes the results table.")
    p.add_argument("--module", default=None, help="a registered module name (chanattn list)")
    p.add_argument("--arch", default=None, help="an architecture (chanattn models)")
    p.add_argument("--checkpoint", default=None, metavar="RUN",
                   help="a trained model: a run directory (its best.pt) or a checkpoint file; with "
                        "--format safetensors, its weights and config (chanattn.from_pretrained reads it)")
    p.add_argument("--attn", default=None, help="with --arch: the attention module in it")
    p.add_argument("--num-classes", type=positive, default=None, help="with --arch: classes of the head")
    choices = "{" + ",".join((*FORMATS, "safetensors")) + "}"
    p.add_argument("--format", default="onnx", type=_format, metavar=choices,
                   help="the export path (safetensors: with --checkpoint)")
    p.add_argument("--out", default=None, help="the file to write (.onnx, .pt2, .pt)")
    p.add_argument("--shape", default=None,
                   help="example input BxCxHxW (default 1xCx14x14 for a module, the architecture's size "
                        "for a model); H and W are fixed in the export, the batch is dynamic")
    p.add_argument("--channels", type=positive, default=None, help="with --module: C (default 64)")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="run every module and model along every path and write the results (JSON)")
    p.set_defaults(run=run)


def _export_checkpoint(args: argparse.Namespace, g):
    """A trained model out: safetensors (weights + config), or an export path at its input size."""
    import torch

    from ..export import export
    from ..hub import load_model, save_safetensors

    for option in ("attn", "channels", "num_classes"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option.replace('_', '-')} does not go with --checkpoint (the run fixes it)")
    model = load_model(args.checkpoint)
    cfg = model.chanattn_config
    if args.format == "safetensors":
        save_safetensors(model, args.out)
        print(f"chanattn export: {cfg['arch']} + {cfg.get('attn') or 'none'} (epoch {cfg.get('epoch')}) -> "
              f"{args.out} (safetensors: weights and config; chanattn.from_pretrained({args.out!r}) "
              "loads it)")
        return None
    if args.shape is not None:
        shape = parse_shape(args.shape)
    elif cfg.get("input_size"):
        shape = (1, *cfg["input_size"])
    else:
        raise UsageError(f"the run in {args.checkpoint!r} does not record its input size; "
                         "give --shape BxCxHxW")
    target = f"{cfg['arch']} + {cfg.get('attn') or 'none'} ({args.checkpoint})"
    return export(model, torch.randn(*shape, generator=g), args.out, args.format, target=target)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import export_model, export_module, record

    if args.record is not None:
        if args.module or args.arch:
            raise UsageError("--record runs every module and model; leave out --module and --arch")
        record(args.record)
        print(f"chanattn export: wrote {args.record}")
        return 0
    if sum(map(bool, (args.module, args.arch, args.checkpoint))) != 1:
        raise UsageError("give one of --module NAME, --arch NAME or --checkpoint RUN (or --record FILE)")
    if args.out is None:
        raise UsageError("--out FILE is required")
    if args.format == "safetensors" and not args.checkpoint:
        raise UsageError("--format safetensors writes a trained model's weights: "
                         "use it with --checkpoint RUN")
    g = torch.Generator().manual_seed(0)
    if args.checkpoint:
        result = _export_checkpoint(args, g)
        if result is None:
            return 0
    elif args.module:
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
