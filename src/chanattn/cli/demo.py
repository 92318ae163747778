"""``chanattn demo``: every module built, run forward and backward on a random batch."""

from __future__ import annotations

import argparse
import time

from ._args import parse_shape


def add_parser(sub, name: str, parents: list) -> None:
    p = sub.add_parser(name, parents=parents, help="build every module and check a forward/backward pass")
    p.add_argument("--shape", default="8x64x14x14", help="input batch BxCxHxW")
    p.set_defaults(run=run)


def _check(name: str, x, torch) -> dict:
    from ..catalog import count_parameters
    from ..registry import create

    m = create(name, x.shape[1])
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
    return {"params": count_parameters(m), "forward": str(tuple(y.shape[1:])),
            "ms": sorted(times)[len(times) // 2] * 1e3,
            "check": "ok" if ok else "FAILED (shape or non-finite values)"}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..registry import list_modules, module_info
    from ..table import Column, TextTable

    b, c, h, w = parse_shape(args.shape)
    torch.manual_seed(0)
    x = torch.randn(b, c, h, w)
    names = list_modules()
    print(f"chanattn demo: {len(names)} modules on a random batch of shape {tuple(x.shape)}\n")
    table = TextTable([Column("name", "name", width=16), Column("kind", "kind", width=14),
                       Column("params", "params", ",", width=10),
                       Column("forward", "forward", align=">", width=13),
                       Column("eval ms", "ms", ".2f", width=8), Column("check", "check")])
    for line in table.head():
        print(line)
    failures = 0
    for name in names:
        rec = {"name": name, "kind": module_info(name).kind}
        try:
            rec.update(_check(name, x, torch))
        except Exception as exc:  # report every module, then fail at the end
            rec["check"] = f"FAILED: {exc}"
        failures += rec["check"] != "ok"
        print(table.row(rec))
    print(f"\n{len(names) - failures}/{len(names)} modules passed forward, backward and eval checks "
          f"(forward = output (C, H, W); eval ms = median of 5 forward passes on {torch.get_num_threads()} "
          "threads)")
    return 1 if failures else 0
