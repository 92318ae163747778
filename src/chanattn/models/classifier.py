"""What timm's classification models offer, for chanattn's backbones: a global pooling of a chosen
type, a classifier that can be replaced (``reset_classifier``, ``get_classifier``),
``forward_head(x, pre_logits=...)``, and the attributes ``num_classes``, ``num_features``,
``head_hidden_size`` and ``feature_info`` that timm's feature extraction reads
(``timm.create_model(..., features_only=True)``: :mod:`chanattn.timm`).

This file imports no timm: ``import chanattn`` never does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["POOL_TYPES", "ClassifierMixin", "GlobalPool", "make_classifier"]

#: ``global_pool`` values, as timm's: mean, maximum, their mean, both concatenated, none.
POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


class GlobalPool(nn.Module):
    """y = a pooling of x over (H, W), flattened to (B, C): ``"avg"`` the mean, ``"max"`` the
    maximum, ``"avgmax"`` (mean + max) / 2, ``"catavgmax"`` [mean, max] (2C features); ``""`` no
    pooling (x unchanged, (B, C, H, W)), for a model whose classifier was removed.

    Args:
        pool_type: one of :data:`POOL_TYPES` (default ``"avg"``).
    """

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise InputError(f"GlobalPool: pool_type must be one of {POOL_TYPES}, got {pool_type!r}")
        self.pool_type = pool_type

    def feat_mult(self) -> int:
        """Output features per input channel."""
        return 2 if self.pool_type == "catavgmax" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)  # (B, C)
        avg = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, C)
        if self.pool_type == "avg":
            return avg
        peak = F.adaptive_max_pool2d(x, 1).flatten(1)
        if self.pool_type == "avgmax":
            return 0.5 * (avg + peak)
        return torch.cat([avg, peak], 1)  # (B, 2C)

    def extra_repr(self) -> str:
        return repr(self.pool_type)


def make_classifier(in_features: int, num_classes: int, global_pool: str = "avg") -> nn.Module:
    """``nn.Linear(in_features, num_classes)``, or ``nn.Identity()`` for ``num_classes=0`` (timm's
    convention: the model then returns its pooled features; ``global_pool=""``, no pooling, needs it)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise InputError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
    if global_pool == "" and num_classes:
        raise InputError(f"global_pool='' (no pooling) needs num_classes=0, got {num_classes!r}")
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


class ClassifierMixin:
    """timm's classifier API for a backbone whose classifier is the module at ``_classifier_name``
    (``"fc"``, ``"classifier.1"``), after the pooling at attribute ``_pool_name``.

    The class sets ``num_classes``, ``num_features`` (channels of ``forward_features``' output),
    ``head_hidden_size`` (features into the classifier) and ``feature_info`` (one dict per feature
    level, ``num_chs``, ``reduction``, ``module``, as timm's models) in its constructor.
    """

    _pool_name = "pool"
    _classifier_name = "fc"

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The classifier (``nn.Linear``, or ``nn.Identity`` without classes), or its name."""
        return self._classifier_name if name_only else self.get_submodule(self._classifier_name)

    def global_pool_type(self) -> str:
        """The pooling before the classifier: one of :data:`POOL_TYPES`, or ``"gsop"``."""
        return getattr(getattr(self, self._pool_name), "pool_type", "gsop")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` classes (0: none, the model returns its pooled
        features), and optionally another pooling (one of :data:`POOL_TYPES`; None keeps the
        current one; ``""`` only with ``num_classes=0``). The new layers are on the old ones' device
        and dtype and in the model's mode; the recorded ``chanattn_config`` follows, so the model
        saves and loads (``chanattn.save_pretrained``) as it now is.

        Raises:
            InputError: a bad ``num_classes`` or ``global_pool``.
        """
        owner = f"{type(self).__name__}.reset_classifier"
        if global_pool is not None and global_pool not in POOL_TYPES:
            raise InputError(f"{owner}: global_pool must be one of {POOL_TYPES} or None, got {global_pool!r}")
        if global_pool == "" and num_classes:
            raise InputError(f"{owner}: global_pool='' (no pooling) needs num_classes=0, got {num_classes!r}")
        old = self.get_classifier()
        ref = next(iter([*old.parameters(), *self.parameters()]), None)
        factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        if global_pool is not None and global_pool != self.global_pool_type():
            pool = GlobalPool(global_pool).train(self.training)
            setattr(self, self._pool_name, pool)
            self.head_hidden_size = self.num_features * pool.feat_mult()
        with torch.device(factory.get("device", "cpu")):
            fc = make_classifier(self.head_hidden_size, num_classes)
        if "dtype" in factory:
            fc.to(dtype=factory["dtype"])
        fc.train(self.training)
        parent, _, name = self._classifier_name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, name, fc)
        self.num_classes = num_classes
        config = getattr(self, "chanattn_config", None)
        if isinstance(config, dict):
            config["num_classes"] = num_classes
            if global_pool is not None:
                kwargs = config.setdefault("model_kwargs", {})
                kwargs["global_pool"] = self.global_pool_type()
                if kwargs.get("head") == "gsop" and kwargs["global_pool"] != "gsop":
                    kwargs["head"] = "avg"  # the covariance head was replaced
