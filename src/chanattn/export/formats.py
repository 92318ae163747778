"""The export paths and the settings of their checks (imports no torch: the command line's choices)."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["ATOL", "FORMATS", "ONNX_OPSET", "SUFFIXES", "normalise_format"]

FORMATS = ("torch.export", "onnx", "torchscript")

#: The file name ending of each path's artifact.
SUFFIXES = {"torch.export": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}

#: The ONNX opset of the ``"onnx"`` path (torch 2.14's default; onnxruntime 1.18+ runs it).
ONNX_OPSET = 20

#: The tolerance of the comparison with eager mode, relative to max(1, max |eager output|).
ATOL = 1e-4

_ALIASES = {"export": "torch.export", "torch_export": "torch.export", "pt2": "torch.export",
            "jit": "torchscript", "script": "torchscript", "trace": "torchscript"}



def normalise_format(fmt: str) -> str:
    """The path ``fmt`` names (one of :data:`FORMATS`; ``"pt2"``, ``"jit"``, ... are aliases)."""
    key = str(fmt).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise InputError(f"chanattn.export: fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return key
