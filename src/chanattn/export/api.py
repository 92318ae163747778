"""``export``, ``export_module`` and ``export_model``: the public entry points."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .backends import ExportResult, Job, prepare, run_export
from .formats import ATOL

__all__ = ["export", "export_model", "export_module"]

def export(module: nn.Module, example_input: torch.Tensor, path: str | Path | None = None,
           fmt: str = "onnx", *, target: str | None = None, atol: float = ATOL,
           dynamic_batch: bool = True) -> ExportResult:
    """Export ``module`` along ``fmt`` in eval mode and check the result against eager mode.

    Args:
        module: any ``nn.Module`` taking one tensor (an attention module, a model).
        example_input: the input the export is captured with; H, W (and every dimension but the
            batch) are fixed to its shape.
        path: where to write the artifact (``.pt2`` for ``torch.export``, ``.onnx``, ``.pt`` for
            TorchScript; default None: nothing is written). When given, the check runs the file
            read back.
        fmt: ``"torch.export"``, ``"onnx"`` or ``"torchscript"`` (default ``"onnx"``).
        target: the name used in messages (default: the module's registry name and class).
        atol: the tolerance of the check, relative to max(1, max |eager output|) (default 1e-4).
        dynamic_batch: capture the batch dimension as dynamic where the module allows it (default
            True); False fixes it to the example's (a faster capture).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: the module cannot take the path; the message names the module, the path and
            the reason.
        ValueError, TypeError: ``fmt`` is unknown, or the module rejects ``example_input`` in
            eager mode (its own error).
    """
    fmt, target = prepare(module, example_input, fmt, target)
    job = Job(module, example_input.detach(), None if path is None else Path(path), target, atol,
               bool(dynamic_batch))
    return run_export(job, fmt)


def default_example(channels: int, size: tuple[int, int] = (9, 7), batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, *size, generator=g)


def export_module(module_or_name: nn.Module | str, example_input: torch.Tensor | None = None,
                  path: str | Path | None = None, fmt: str = "onnx", *, channels: int | None = None,
                  atol: float = ATOL, dynamic_batch: bool = True, **module_kwargs) -> ExportResult:
    """Export an attention module, given as a module or a registered name.

    Args:
        module_or_name: a module, or a name of :func:`chanattn.list_modules` (built with
            ``channels`` and ``module_kwargs``).
        example_input: default a (2, C, 9, 7) standard normal batch (fixed seed).
        path, fmt, atol, dynamic_batch: as :func:`export`.
        channels: C for a name (default: the example's channels, else 32).
        **module_kwargs: the module's constructor options, for a name.
    """
    from ..registry import create

    if isinstance(module_or_name, str):
        if channels is None:
            channels = int(example_input.shape[1]) if example_input is not None else 32
        module = create(module_or_name, channels, **module_kwargs)
    elif module_kwargs or channels is not None:
        raise InputError("export_module: channels and module options apply to a registered name, "
                         f"not to a module instance ({type(module_or_name).__name__})")
    else:
        module = module_or_name
    if example_input is None:
        example_input = default_example(int(getattr(module, "channels", channels or 32)))
    return export(module, example_input, path, fmt, atol=atol, dynamic_batch=dynamic_batch)


def model_example(arch: str, size: int | None = None, batch: int = 2) -> torch.Tensor:
    from ..models import model_info

    c, h, w = model_info(arch).input_size
    if size is not None:
        h = w = size
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, c, h, w, generator=g)


def export_model(arch: str, example_input: torch.Tensor | None = None, path: str | Path | None = None,
                 fmt: str = "onnx", *, attn=None, attn_kwargs: dict | None = None, atol: float = ATOL,
                 dynamic_batch: bool = True, **model_kwargs) -> ExportResult:
    """Export ``chanattn.create_model(arch, attn=attn, attn_kwargs=attn_kwargs, **model_kwargs)``.

    ``example_input`` defaults to a batch of 2 at the architecture's input size (224 x 224 for the
    ImageNet family); see :func:`export` for the rest.
    """
    from ..models import create_model

    model = create_model(arch, attn=attn, attn_kwargs=attn_kwargs, **model_kwargs)
    if example_input is None:
        example_input = model_example(arch)
    target = arch + (f" + {attn}" if isinstance(attn, str) else "")
    return export(model, example_input, path, fmt, target=target, atol=atol, dynamic_batch=dynamic_batch)

