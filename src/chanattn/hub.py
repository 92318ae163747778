"""Trained models out of chanattn: load a run, save and load weights-only folders, the Hugging Face Hub.

- :func:`load_model` (``chanattn.load_model("runs/se")``): the model of a training run or checkpoint,
  weights loaded, in eval mode, with its :attr:`chanattn_config` (architecture, attention, classes,
  the input size and normalisation it was trained with).
- :func:`save_pretrained` / :func:`from_pretrained`: a folder as the Hugging Face Hub lays one out,
  ``config.json`` (what builds the model, and its input: size, mean, std, class names) and
  ``model.safetensors`` (the weights; shared tensors such as DIA's per-stage cell stored once), with
  a short ``README.md`` model card. :func:`from_pretrained` takes such a folder, a ``.safetensors``
  file written by :func:`save_safetensors` (the config in its metadata), or a Hub repo id.
- :func:`push_to_hub`: :func:`save_pretrained` into a temporary folder, then uploaded with
  ``huggingface_hub`` (``pip install 'chanattn[hub]'``).

Nothing here unpickles a file: checkpoints load with ``weights_only=True``
(:func:`chanattn.training.checkpoint.load_checkpoint`), weights with safetensors.

>>> import tempfile, chanattn
>>> model = chanattn.create_model("resnet8", attn="eca", in_chans=1, num_classes=10)
>>> folder = chanattn.save_pretrained(model, tempfile.mkdtemp())
>>> chanattn.from_pretrained(folder).chanattn_config["attn"]
'eca'
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from ._optional import require
from .errors import CheckpointError, InputError
from .io import atomic_path, write_json, write_text

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "from_pretrained", "load_model", "load_safetensors", "model_config",
           "push_to_hub", "save_pretrained", "save_safetensors"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The key of the model config in a .safetensors file's metadata.
METADATA_KEY = "chanattn_config"

#: What create_model needs (the rest of a config describes the input).
_BUILD_KEYS = ("arch", "attn", "attn_kwargs", "num_classes", "model_kwargs")


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config :func:`chanattn.create_model` recorded on ``model`` (``model.chanattn_config``).

    Raises:
        InputError: the model was not built by ``create_model`` with a registered module name (a
            callable ``attn`` cannot be written down).
    """
    cfg = getattr(model, "chanattn_config", None)
    if not isinstance(cfg, dict):
        raise InputError(f"{type(model).__name__} has no chanattn_config: save_pretrained and export "
                         "--checkpoint take models built by chanattn.create_model (or loaded by "
                         "chanattn.load_model / from_pretrained)")
    if cfg.get("attn_callable"):
        raise InputError(f"{cfg['arch']}: built with a callable attn, which a config file cannot hold; "
                         "build it with a registered module name to save it")
    return cfg


def _build(cfg: dict[str, Any]) -> nn.Module:
    from .models import create_model

    missing = [k for k in ("arch", "num_classes") if k not in cfg]
    if missing:
        raise CheckpointError(f"the model config lacks {', '.join(missing)}: {json.dumps(cfg)[:200]}")
    model = create_model(cfg["arch"], attn=cfg.get("attn"), num_classes=int(cfg["num_classes"]),
                         attn_kwargs=dict(cfg.get("attn_kwargs") or {}) or None,
                         **dict(cfg.get("model_kwargs") or {}))
    extra = {k: v for k, v in cfg.items() if k not in _BUILD_KEYS}
    model.chanattn_config = {**model.chanattn_config, **extra}
    return model


def save_safetensors(model: nn.Module, path: str | os.PathLike, config: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights (parameters and buffers) to a ``.safetensors`` file, atomically.

    Tensors that share memory (DIA's cell, shared by the blocks of a stage) are stored once and
    restored to every name by :func:`load_safetensors`. ``config`` (default: the model's
    ``chanattn_config`` if it has one) goes into the file's metadata."""
    from safetensors.torch import save_model

    if config is None:
        config = getattr(model, "chanattn_config", None)
    metadata = {"format": "pt", "chanattn_version": __version__}
    if config is not None:
        metadata[METADATA_KEY] = json.dumps(config)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(model, tmp, metadata=metadata)
    return path


def load_safetensors(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load the weights of a ``.safetensors`` file into ``model`` (in place); a mismatch is a
    CheckpointError that lists the missing and unexpected names."""
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # a truncated file, a tensor of another shape
        raise CheckpointError(f"{str(path)!r} cannot be loaded into {type(model).__name__}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    if strict and (missing or unexpected):
        from .training.checkpoint import describe_mismatch

        raise CheckpointError(f"{str(path)!r} does not fit {type(model).__name__}: "
                              + describe_mismatch(sorted(missing), sorted(unexpected), []))
    return model


def _safetensors_config(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{str(path)!r} holds weights but no chanattn config (not written by "
                              "chanattn.save_safetensors); build the model and use load_safetensors")
    return json.loads(meta[METADATA_KEY])


def _model_card(cfg: dict[str, Any]) -> str:
    attn = cfg.get("attn") or "none"
    lines = [
        "---", "library_name: chanattn", "tags:", "- image-classification", "- channel-attention",
        f"- {attn}", "---", "",
        f"# {cfg['arch']} + {attn}", "",
        f"A chanattn model: `{cfg['arch']}` with the `{attn}` attention module, "
        f"{cfg['num_classes']} classes.",
        "", "```python", "import chanattn", "",
        "model = chanattn.from_pretrained(\"<this folder or repo id>\")",
        "```", "",
    ]
    if cfg.get("input_size"):
        lines += [f"Input: {'x'.join(map(str, cfg['input_size']))} (C x H x W), normalised with mean "
                  f"{cfg.get('mean')} and std {cfg.get('std')} (pixel values in [0, 1])."]
    if cfg.get("metrics"):
        lines += ["", "Metrics: " + ", ".join(f"{k} {v}" for k, v in cfg["metrics"].items())]
    return "\n".join(lines) + "\n"


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *,
                    config: dict[str, Any] | None = None, model_card: bool = True) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``README.md`` unless there is one, or
    ``model_card=False``) into ``save_directory``; returns its path.

    ``config`` (default: ``model.chanattn_config``) must say how to build the model: ``arch``,
    ``attn``, ``attn_kwargs``, ``num_classes``, ``model_kwargs``; input facts (``input_size``,
    ``mean``, ``std``, ``classes``) and ``metrics`` are kept when present."""
    cfg = dict(config if config is not None else model_config(model))
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CONFIG_NAME, {"library": "chanattn", "chanattn_version": __version__, **cfg})
    save_safetensors(model, folder / WEIGHTS_NAME, cfg)
    if model_card and not (folder / "README.md").exists():
        write_text(folder / "README.md", _model_card(cfg))
    return folder


def _resolve(source: str | os.PathLike, revision: str | None, cache_dir: str | None,
             local_files_only: bool) -> tuple[Path, dict[str, Any]]:
    """(weights file, config) of a folder, a .safetensors file or a Hub repo id."""
    path = Path(source)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{str(path)!r}: from_pretrained takes a folder with {CONFIG_NAME} and "
                                  f"{WEIGHTS_NAME}, a .safetensors file or a Hub repo id (a training "
                                  "checkpoint loads with chanattn.load_model)")
        return path, _safetensors_config(path)
    if path.is_dir():
        folder = path
    elif re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(source)):  # owner/name: a Hub repo id
        folder = _download(str(source), revision, cache_dir, local_files_only)
    else:
        raise CheckpointError(f"{str(source)!r}: no such folder or file (nor a Hub repo id owner/name)")
    config_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (config_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{str(folder)!r} has no {p.name} (a folder written by "
                                  "chanattn.save_pretrained holds config.json and model.safetensors)")
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{str(config_path)!r} is not valid JSON: {exc}") from None
    return weights, cfg


def _download(repo_id: str, revision: str | None, cache_dir: str | None, local_files_only: bool) -> Path:
    snapshot_download = require("huggingface_hub", f"{repo_id!r} is not a local folder; loading it from "
                                "the Hugging Face Hub").snapshot_download
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                      local_files_only=local_files_only,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"]))
    except Exception as exc:
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "not in the local cache (offline)" if offline else "could not be downloaded (no network?)"
        raise CheckpointError(f"{repo_id!r} is not a local folder and {why}: "
                              f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None,
                    local_files_only: bool = False) -> nn.Module:
    """The model saved by :func:`save_pretrained` (a folder), :func:`save_safetensors` (a file) or
    :func:`push_to_hub` (a repo id, downloaded into the Hub cache), weights loaded, in eval mode."""
    weights, cfg = _resolve(source, revision, cache_dir, local_files_only)
    model = _build(cfg)
    load_safetensors(model, weights)
    return model.eval()


def push_to_hub(model: nn.Module, repo_id: str, *, token: str | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str = "Upload chanattn model",
                config: dict[str, Any] | None = None) -> str:
    """:func:`save_pretrained` into a temporary folder and upload it to the Hub repo ``repo_id``
    (created if missing); returns the commit URL."""
    api = require("huggingface_hub", "push_to_hub").HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, config=config)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def _checkpoint_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("best.pt", "last.pt"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"{path!r} holds no best.pt or last.pt (a chanattn run directory has them)")
    return path


def _input_facts(train_cfg: dict[str, Any]) -> dict[str, Any]:
    """num_classes, in_chans, input size, mean, std and class names of the data a run trained on,
    read without its images where the data set allows (digits, CIFAR)."""
    from .data.cifar import CIFAR_SOURCES

    dataset = train_cfg.get("dataset")
    if dataset == "digits":
        from .data.digits import load_digits_bundle

        spec = load_digits_bundle().spec
    elif dataset in CIFAR_SOURCES:
        src = CIFAR_SOURCES[dataset]
        return {"num_classes": src.num_classes, "in_chans": 3, "input_size": [3, 32, 32],
                "mean": list(src.mean), "std": list(src.std), "dataset": dataset}
    else:
        return {"dataset": dataset}
    return {"num_classes": spec.num_classes, "in_chans": spec.in_chans,
            "input_size": [spec.in_chans, *spec.image_size], "mean": list(spec.mean), "std": list(spec.std),
            "classes": list(spec.classes), "dataset": dataset}


def _from_state_dict(state: dict[str, torch.Tensor], facts: dict[str, Any]) -> dict[str, Any]:
    """num_classes and in_chans read off the weights where the data set did not give them: the last
    2-D weight is the classifier, the first 4-D weight the stem."""
    out = dict(facts)
    mats = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    convs = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
    if "num_classes" not in out and mats:
        out["num_classes"] = int(mats[-1].shape[0])
    if "in_chans" not in out and convs:
        out["in_chans"] = int(convs[0].shape[1])
    return out


def load_model(run_dir_or_checkpoint: str | os.PathLike, *,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """The model of a training run (its ``best.pt``, else ``last.pt``) or of a checkpoint file,
    weights loaded, in eval mode. ``model.chanattn_config`` says how to build it and what input it
    expects (``input_size``, ``mean``, ``std``, ``classes`` where the data set gives them).

    Raises:
        CheckpointError: no checkpoint there, a file that is not a chanattn checkpoint, or weights
            that do not fit (the missing and unexpected names are listed).
    """
    from .training.checkpoint import describe_mismatch, load_checkpoint, state_dict_mismatch

    path = _checkpoint_path(run_dir_or_checkpoint)
    ckpt = load_checkpoint(path, map_location=map_location)
    state = ckpt["model"]
    cfg = ckpt.get("model_config")  # recorded by the trainer (training.trainer.run_model_config)
    if cfg is None:  # checkpoints written before model_config was recorded
        train = dict(ckpt.get("config") or {})
        facts = _from_state_dict(state, _input_facts(train))
        model_kwargs = dict(train.get("model_kwargs") or {})
        if "in_chans" in facts:
            model_kwargs.setdefault("in_chans", facts["in_chans"])
        cfg = {"arch": train.get("arch"), "attn": train.get("attn"),
               "attn_kwargs": train.get("attn_kwargs") or {},
               "num_classes": facts.get("num_classes"), "model_kwargs": model_kwargs,
               **{k: v for k, v in facts.items() if k not in ("num_classes", "in_chans")}}
    model = _build(dict(cfg))
    missing, unexpected, misshaped = state_dict_mismatch(model.state_dict(), state)
    if missing or unexpected or misshaped:
        built = f"{cfg.get('arch')} + {cfg.get('attn') or 'none'}"
        keys = describe_mismatch(missing, unexpected, misshaped)
        raise CheckpointError(f"checkpoint {path!r} does not fit {built}: {keys}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path!r}: {' '.join(str(exc).split())[:300]}") from None
    model.chanattn_config["epoch"] = int(ckpt.get("epoch", 0))
    return model.eval()
