"""The ``chanattn`` command line.

    chanattn list            the module table
    chanattn models          the architectures of create_model
    chanattn demo            every module built, run forward and backward on a random batch
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

__all__ = ["main"]


from .errors import CLIError

# Modules that add sub-commands: each has ``add_parsers(subparsers)`` and sets ``func`` on its parsers.
# Kept as a list so that every command lives beside the code it runs.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "chanattn.training.commands",
    "chanattn.bench.commands",
    "chanattn.export",
)


def _cmd_list(args: argparse.Namespace) -> int:
    from .catalog import markdown_table, text_table

    if args.channels < 1:
        raise CLIError(f"--channels must be a positive int, got {args.channels}")
    table = markdown_table if args.format == "markdown" else text_table
    sys.stdout.write(table(args.channels))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import FAMILIES, count_params, create_model, list_models, model_info

    if args.family is not None and args.family not in FAMILIES:
        raise CLIError(f"--family must be one of {', '.join(FAMILIES)}, got {args.family!r}")
    names = list_models(args.family)
    head = f"{'name':<18} {'family':<9} {'input':<10} {'classes':>7}"
    head += f" {'params':>12}" if args.params else ""
    print(f"{head}  description")
    print("-" * (len(head) + 13))
    for name in names:
        info = model_info(name)
        line = (f"{name:<18} {info.family:<9} {'x'.join(map(str, info.input_size)):<10} "
                f"{info.num_classes:>7}")
        if args.params:
            line += f" {count_params(create_model(name)):>12,}"
        print(f"{line}  {info.description}")
    print(f"\n{len(names)} architectures; chanattn.create_model(name, attn=<module>) puts any module of "
          "`chanattn list` in them")
    return 0


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise CLIError(f"--shape expects BxCxHxW with positive integers (e.g. 8x64x14x14), got {text!r}")
    return dims  # type: ignore[return-value]


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .catalog import count_parameters
    from .registry import create, list_modules, module_info

    b, c, h, w = _parse_shape(args.shape)
    torch.manual_seed(0)
    x = torch.randn(b, c, h, w)
    names = list_modules()
    print(f"chanattn demo: {len(names)} modules on a random batch of shape {tuple(x.shape)}\n")
    head = f"{'name':<16} {'kind':<14} {'params':>10} {'forward':>13} {'eval ms':>8}  check"
    print(head)
    print("-" * len(head))
    failures = 0
    for name in names:
        info = module_info(name)
        try:
            m = create(name, c)
            xin = x.clone().requires_grad_(True)
            y = m.train()(xin)
            y.sum().backward()
            ok = (y.shape == x.shape and bool(torch.isfinite(y).all())
                  and xin.grad is not None and bool(torch.isfinite(xin.grad).all()))
            m.eval()
            times = []
            with torch.no_grad():
                for _ in range(5):
                    t0 = time.perf_counter()
                    ye = m(x)
                    times.append(time.perf_counter() - t0)
            ok = ok and ye.shape == x.shape and bool(torch.isfinite(ye).all())
            ms = sorted(times)[len(times) // 2] * 1e3
            status = "ok" if ok else "FAILED (shape or non-finite values)"
            print(f"{name:<16} {info.kind:<14} {count_parameters(m):>10,} {tuple(y.shape[1:])!s:>13} "
                  f"{ms:>8.2f}  {status}")
        except Exception as exc:  # report every module, then fail at the end
            ok = False
            print(f"{name:<16} {info.kind:<14} {'':>10} {'':>13} {'':>8}  FAILED: {exc}")
        failures += not ok
    print(f"\n{len(names) - failures}/{len(names)} modules passed forward, backward and eval checks "
          f"(forward = output (C, H, W); eval ms = median of 5 forward passes on {torch.get_num_threads()} "
          "threads)")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chanattn", description="Channel attention for PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="print the table of modules")
    p.add_argument("--channels", type=int, default=256, help="C at which parameters are counted")
    p.add_argument("--format", choices=("text", "markdown"), default="text",
                   help="a terminal table or the README's markdown table")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("models", help="print the architectures of create_model")
    p.add_argument("--family", default=None, help="only this family (cifar, imagenet, mobile, plain)")
    p.add_argument("--params", action="store_true", help="build each model and count its parameters")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="build every module and check a forward/backward pass")
    p.add_argument("--shape", default="8x64x14x14", help="input batch BxCxHxW (default 8x64x14x14)")
    p.set_defaults(func=_cmd_demo)

    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = " (a training run continues with --resume DIR)" if args.command in ("train", "compare") else ""
        print(f"chanattn {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, PermissionError, OSError) as exc:
        if args.debug:
            raise
        print(f"chanattn {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else is our bug or the machine's: still one line
        if args.debug:
            raise
        print(f"chanattn {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}"
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
