"""The training configuration: one dataclass, the references' recipes as named presets, and the
resolution order recipe < config file (YAML/JSON) < command-line flags.

Units are in the comments. The resolved configuration is saved with every run
(``DIR/config.yaml``) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = [
    "LOGGERS",
    "OPTIMIZERS",
    "PROGRESS_MODES",
    "RANDAUGMENT_DEFAULT",
    "RECIPES",
    "RUNTIME_FIELDS",
    "SCHEDULES",
    "TrainConfig",
    "describe_recipe",
    "load_config_file",
    "recipe_line",
    "resolve_config",
]

OPTIMIZERS = ("sgd", "adamw")

#: Fields that do not change what a run computes: a resumed run may take new values for them.
RUNTIME_FIELDS = (
    "device",
    "threads",
    "num_workers",
    "progress",
    "log_interval",
    "log",
    "stop_after",
    "data_root",
    "download",
)
SCHEDULES = ("multistep", "step", "cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")


def _f(default: Any = None, help: str = "", choices: tuple[str, ...] | None = None, *,
       factory: Any = None) -> Any:
    """A TrainConfig field with its help text (and allowed values) for the command line."""
    meta = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


#: "log" prints a line every ``log_interval`` steps; "lines" is its older name.
PROGRESS_MODES = ("auto", "bar", "log", "lines", "none")
#: What a run writes besides its checkpoints: metrics.jsonl (always), metrics.csv, TensorBoard events.
LOGGERS = ("jsonl", "csv", "tensorboard")
#: ``augment="randaugment"``: timm's RandAugment with the magnitude of the timm ImageNet recipes.
RANDAUGMENT_DEFAULT = "rand-m9-mstd0.5"


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults: the CIFAR recipe of the references; the
    command line starts from a recipe (``--recipe``, default chosen from ``--dataset``)."""

    # data
    dataset: str = _f("digits", "digits (embedded), cifar10, cifar100 or imagefolder",
                      ("digits", "cifar10", "cifar100", "imagefolder"))
    data_root: str | None = _f(None, "directory of the data set (CIFAR archives, or imagefolder's "
                                     "train/ and val/); default ~/.cache/chanattn/data")
    download: bool = _f(False, "download CIFAR into --data-root when it is missing")
    image_size: int | None = _f(None, "imagefolder: images resized to this side (default 32)")
    # model
    arch: str = _f("resnet8", "architecture (chanattn models)")
    attn: str | None = _f(None, "attention module (chanattn list), or none for the baseline")
    attn_kwargs: dict = _f(help="module options as JSON or k=v,k=v (e.g. rd_ratio=0.125)", factory=dict)
    model_kwargs: dict = _f(help="architecture options as JSON or k=v,k=v (e.g. shortcut=pad)",
                            factory=dict)
    # optimisation
    epochs: int = _f(160, "epochs of the schedule")
    batch_size: int = _f(128, "global batch (split over the ranks when distributed)")
    eval_batch_size: int = _f(512, "batch of the evaluation")
    optimizer: str = _f("sgd", "the optimiser", OPTIMIZERS)
    lr: float = _f(0.1, "peak learning rate (for the global batch)")
    momentum: float = _f(0.9, "SGD momentum (AdamW: beta1)")
    nesterov: bool = _f(False, "Nesterov momentum (SGD)")
    weight_decay: float = _f(1e-4, "weight decay (the modules' no_weight_decay() parameters skip it)")
    decay_norm_and_bias: bool = _f(True, "decay norms and biases too, as the references do")
    schedule: str = _f("multistep", "learning-rate schedule, per iteration", SCHEDULES)
    milestones: list[int] = _f(help="comma-separated epochs of the multistep schedule",
                               factory=lambda: [120, 140])
    step_size: int = _f(30, "epochs between decays of the step schedule")
    gamma: float = _f(0.1, "lr factor at each milestone or step")
    min_lr: float = _f(0.0, "floor of the cosine schedule")
    warmup_epochs: float = _f(0.0, "linear warm-up from lr * warmup_factor, in epochs (fractions allowed)")
    warmup_factor: float = _f(0.1, "the warm-up's starting factor")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy")
    grad_clip: float | None = _f(None, "clip the global gradient norm to this")
    # augmentation (None: the data set's reference augmentation)
    crop_padding: int | None = _f(None, "zero padding of the random crop (default: the data set's "
                                        "reference, 4 for CIFAR)")
    hflip: bool | None = _f(None, "random horizontal flips (default: the data set's reference)")
    augment: str | None = _f(None, "imagefolder, with timm: randaugment (timm's rand-m9-mstd0.5) or a "
                                   "timm RandAugment string such as rand-m7-n3-mstd0.5, before the crop "
                                   "and flip")
    mixup: float = _f(0.0, "imagefolder, with timm: Mixup alpha (> 0 turns it on; the loss becomes "
                           "the soft-target cross-entropy, label smoothing included)")
    cutmix: float = _f(0.0, "imagefolder, with timm: CutMix alpha (> 0 turns it on; with --mixup each "
                            "batch takes one of the two)")
    # speed
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    amp: str = _f("none", "mixed precision (fp16 needs CUDA)", AMP_MODES)
    channels_last: bool = _f(False, "channels_last memory format")
    compile: bool = _f(False, "torch.compile the model")
    threads: int | None = _f(None, "torch CPU threads per process (default: chosen from the usable "
                                    "cores, the 1-minute load and the processes on this machine)")
    num_workers: int = _f(0, "data-loader workers (imagefolder on disk only)")
    # reproducibility and bookkeeping
    seed: int = _f(0, "seed of weights, batch order and augmentation")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms (slower on CUDA)")
    out: str | None = _f(None, "the run directory (checkpoints, metrics, config)")
    log_interval: int = _f(50, "steps between plain log lines (when not on a terminal)")
    progress: str = _f("auto", "progress display: bar (tqdm when installed), log (a line every "
                               "--log-interval steps), none; auto: a bar on a terminal, else log",
                       PROGRESS_MODES)
    log: list[str] = _f(help="what the run writes besides its checkpoints, comma-separated or repeated: "
                             "jsonl (metrics.jsonl, always), csv (metrics.csv), tensorboard (DIR/"
                             "tensorboard/, needs the tensorboard package)",
                        factory=lambda: ["jsonl", "csv"])
    stop_after: int | None = _f(None, "stop after this epoch (the schedule still spans --epochs; "
                                      "continue with --resume)")
    recipe: str | None = _f(None, "the preset these values started from (informational)")
    init_from: str | None = _f(None, "start from the model weights of this checkpoint (a file, a run "
                                     "directory: its last.pt, a state_dict or safetensors file) with a "
                                     "new optimiser at epoch 0: fine-tuning")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Raise ConfigError on values that cannot work, naming the field."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config: {msg}")

        need(
            isinstance(self.epochs, int) and self.epochs >= 1,
            f"epochs must be an int >= 1, got {self.epochs!r}",
        )
        need(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            f"batch_size must be an int >= 1, got {self.batch_size!r}",
        )
        need(
            isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1,
            f"eval_batch_size must be an int >= 1, got {self.eval_batch_size!r}",
        )
        need(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        need(
            self.schedule in SCHEDULES,
            f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        need(self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        for name in ("lr", "weight_decay", "min_lr", "warmup_epochs", "label_smoothing", "momentum", "gamma"):
            value = getattr(self, name)
            need(
                isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                f"{name} must be a finite number >= 0, got {value!r}",
            )
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.label_smoothing < 1, f"label_smoothing must be < 1, got {self.label_smoothing}")
        need(
            self.nesterov is False or (self.optimizer == "sgd" and self.momentum > 0),
            "nesterov needs optimizer sgd with momentum > 0",
        )
        need(
            all(isinstance(m, int) and m >= 1 for m in self.milestones),
            f"milestones must be positive epoch numbers, got {self.milestones!r}",
        )
        need(
            list(self.milestones) == sorted(self.milestones),
            f"milestones must increase, got {self.milestones!r}",
        )
        need(
            isinstance(self.step_size, int) and self.step_size >= 1,
            f"step_size must be >= 1, got {self.step_size!r}",
        )
        need(
            self.warmup_epochs <= self.epochs,
            f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})",
        )
        need(
            self.stop_after is None or 1 <= self.stop_after <= self.epochs,
            f"stop_after must be between 1 and epochs ({self.epochs}), got {self.stop_after!r}",
        )
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip!r}")
        need(self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads!r}")
        need(
            self.progress in PROGRESS_MODES,
            f"progress must be auto, bar, log or none, got {self.progress!r}",
        )
        if self.augment in ("none", "None", ""):
            self.augment = None
        logs = [self.log] if isinstance(self.log, str) else self.log
        need(
            isinstance(logs, (list, tuple)) and all(x in LOGGERS for x in logs),
            f"log must list some of {', '.join(LOGGERS)}, got {self.log!r}",
        )
        self.log = list(dict.fromkeys(["jsonl", *logs]))  # metrics.jsonl is the run's record: always
        need(
            self.augment is None or (isinstance(self.augment, str)
                                     and (self.augment == "randaugment" or self.augment.startswith("rand-"))),
            f"augment must be randaugment or a timm RandAugment string (rand-m9-mstd0.5, ...), got "
            f"{self.augment!r}",
        )
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                 f"{name} must be a finite number >= 0, got {value!r}")
        timm_aug = [f for f, on in (("augment", self.augment), ("mixup", self.mixup),
                                    ("cutmix", self.cutmix)) if on]
        need(
            not timm_aug or self.dataset == "imagefolder",
            f"{', '.join(timm_aug)} (timm's transforms) work on imagefolder data sets only, not "
            f"{self.dataset!r} (whose images are not RGB photographs: use --crop-padding and --hflip)",
        )
        need(
            isinstance(self.attn_kwargs, dict) and isinstance(self.model_kwargs, dict),
            "attn_kwargs and model_kwargs must be mappings",
        )
        need(
            self.crop_padding is None or self.crop_padding >= 0,
            f"crop_padding must be >= 0, got {self.crop_padding}",
        )
        return self


_CIFAR = dict(
    epochs=160,
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="multistep",
    milestones=[120, 140],
    gamma=0.1,
)

#: Named presets. ``cifar``: the references' CIFAR recipe (MODULES.md); ``c3-cifar10``: seed 002's
#: CIFAR-10 schedule; ``srm-resnet32``: SRM's ResNet-32 runs; ``digits``: a short recipe for the
#: embedded data set (minutes on a laptop CPU).
RECIPES: dict[str, dict[str, Any]] = {
    "cifar": dict(_CIFAR),  # MODULES.md: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, x0.1 at 120 and 140
    "cifar100": dict(_CIFAR, dataset="cifar100"),
    "c3-cifar10": dict(_CIFAR, dataset="cifar10", milestones=[100, 140]),
    "c3-cifar100": dict(_CIFAR, dataset="cifar100"),
    "srm-resnet32": dict(_CIFAR, arch="resnet32", epochs=100, milestones=[70, 80]),
    "digits": dict(
        dataset="digits",
        arch="resnet8",
        epochs=10,
        batch_size=64,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1.0,
        milestones=[],
    ),
}


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON mapping of TrainConfig fields."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(
            f"config file {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path!r} must hold a mapping of fields, got {type(data).__name__}")
    return dict(data)


def resolve_config(
    recipe: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """recipe < config file < overrides, checked against the fields of :class:`TrainConfig`."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; the recipes are {', '.join(RECIPES)}")
        values.update(RECIPES[recipe])
        values["recipe"] = recipe
    for source, data in (
        ("config file", load_config_file(config_file) if config_file else {}),
        ("overrides", dict(overrides or {})),
    ):
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(sorted(names))}"
            )
        values.update({k: v for k, v in data.items()})
    if values.get("attn") in ("none", "None", ""):
        values["attn"] = None
    return TrainConfig(**values).validate()


def describe_recipe(cfg: TrainConfig) -> str:
    """The schedule and optimiser in force, in one line: ``"160 epochs, batch 128, sgd lr 0.1
    (momentum 0.9, weight decay 0.0001), x0.1 at epochs 120,140"``."""
    if cfg.schedule == "multistep":
        sched = (f"x{cfg.gamma:g} at epochs {','.join(map(str, cfg.milestones))}" if cfg.milestones
                 else "multistep without milestones (constant)")
    elif cfg.schedule == "step":
        sched = f"x{cfg.gamma:g} every {cfg.step_size} epochs"
    elif cfg.schedule == "cosine":
        sched = f"cosine to {cfg.min_lr:g}"
    else:
        sched = "constant"
    if cfg.warmup_epochs:
        sched += f" after {cfg.warmup_epochs:g} warm-up epoch{'s' if cfg.warmup_epochs != 1 else ''}"
    mom = "beta1" if cfg.optimizer == "adamw" else "momentum"
    return (f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, batch {cfg.batch_size}, {cfg.optimizer} "
            f"lr {cfg.lr:g} ({mom} {cfg.momentum:g}, weight decay {cfg.weight_decay:g}), {sched}")


def recipe_line(cfg: TrainConfig, note: str | None = None) -> str:
    """The line ``train`` and ``compare`` print at their start: the recipe, how it was chosen
    (``note``) and what it sets (:func:`describe_recipe`): ``"recipe digits (--recipe): 10 epochs,
    ..."``."""
    recipe = f"recipe {cfg.recipe}" if cfg.recipe else "no recipe"
    return f"{recipe}{f' ({note})' if note else ''}: {describe_recipe(cfg)}"
