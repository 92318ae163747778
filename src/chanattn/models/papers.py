"""The papers' headline models by name, with the figures the papers publish.

:data:`PAPER_MODELS` lists each model as :func:`chanattn.create_model` builds it (the architecture,
the module, the options the paper's model uses) and the parameters, multiply-adds and top-1
accuracy its paper (or official README) reports, with the source. :func:`create_paper_model`
builds one by name; ``tests/test_paper_models.py`` checks our parameters (within 1%) and
multiply-adds (within 3%, where the paper counts convolution and fully-connected multiply-adds at
the stated input) against them, and the README's table of paper models is generated from here
(:func:`chanattn.catalog.paper_models_markdown`).

Where our count differs from the paper's by a counting convention, ``macs_note`` says why, and
the test asserts that explanation (for example: the SE, CBAM, BAM and GSoP papers count FLOPs on
ResNet v1, ``stride_in_1x1=True``; ECA's table copies those counts for its v1.5 models).

>>> from chanattn.models.papers import create_paper_model
>>> model = create_paper_model("cbam_resnet50")  # ResNet-50 v1 + CBAM, 28.09 M parameters
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn

from ..errors import InputError
from ..registry import normalize_name, unknown_name_error

__all__ = ["PAPER_MODELS", "PaperModel", "create_paper_model", "list_paper_models", "paper_model"]


@dataclass(frozen=True)
class PaperModel:
    """A model of a paper and the figures the paper reports for it.

    Attributes:
        name: the name :func:`create_paper_model` takes (``"cbam_resnet50"``).
        title: the model's name in its paper (``"CBAM-ResNet-50"``).
        arch, attn: of :func:`chanattn.create_model`.
        options: the other arguments of :func:`chanattn.create_model` (``num_classes``,
            ``stride_in_1x1``, ``head``, ``attn_kwargs`` ...).
        dataset: ``"ImageNet"`` (224 x 224 inputs) or ``"CIFAR-100"`` (32 x 32).
        params: the paper's parameter count, in ``params_unit``.
        params_unit: ``10**6`` (M), or ``2**20`` where the paper divides by 2^20 (ECA's Table 3).
        macs: the paper's multiply-adds ("FLOPs") per image, or None where it gives none.
        accuracy: the top-1 accuracy (%) the paper or official README reports, or None.
        source: where ``params`` and ``macs`` come from.
        accuracy_source: where ``accuracy`` comes from.
        macs_note: where our count differs from the paper's beyond 3%, why (asserted by a test).
        note: how our model relates to the paper's where it is worth saying.
    """

    name: str
    title: str
    arch: str
    attn: str | None
    dataset: str
    params: float
    source: str
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    params_unit: int = 10**6
    macs: float | None = None
    accuracy: float | None = None
    accuracy_source: str = ""
    macs_note: str = ""
    note: str = ""

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the paper's inputs."""
        return (3, 224, 224) if self.dataset == "ImageNet" else (3, 32, 32)

    @property
    def build(self) -> str:
        """The call that builds it, as text."""
        args = [repr(self.arch)] + ([f"attn={self.attn!r}"] if self.attn else [])
        args += [f"{k}={dict(v) if isinstance(v, Mapping) else v!r}" for k, v in self.options.items()]
        return f"create_model({', '.join(args)})"

    def counts(self, **overrides) -> tuple[int, int]:
        """(parameters, multiply-adds per image at the paper's input) of our model, built on the meta
        device (no weights allocated); computed once per process and ``overrides``."""
        return _counts(self.name, tuple(sorted(overrides.items())))

    def create(self, **overrides) -> nn.Module:
        """The model (``overrides`` replace its options: ``device`` contexts, ``num_classes`` ...)."""
        from .registry import create_model

        return create_model(self.arch, attn=self.attn, **{**self.options, **overrides})


def _m(**kwargs) -> Mapping[str, object]:
    return MappingProxyType(kwargs)


_C3 = "C3 paper (NeurIPS 2019) Table 1, CIFAR-100"
_C3_MACS = ("the C3 paper counts more than multiply-adds of convolutions and FC layers (its SE column adds "
            "0.1/0.3/0.6 M for FC layers of 4K/12K/25K multiply-adds: pooling and products counted); it adds "
            "4.3 M for C3 at every depth, we count 1.3 M (the encoder, decoder and message products of one "
            "block before each stage): the same at every depth, as one block per stage gives")
_C3_WRN = ("the C3 reference builds its wide network as a width-10 post-activation ResNet-20 "
           "(wide_resnet_cifar(20, 10)): the convolutions of WRN-22-10")
_SE_R8 = _m(rd_ratio=1 / 8)
_V1 = "ResNet v1 (stride in the first 1x1), on which the paper counts its FLOPs"
_CBAM = "CBAM paper (arXiv:1807.06521) Table 4"
_SK = "SKNet paper (arXiv:1903.06586), ImageNet table at similar complexity"
_ECA_README = "ECA-Net official README (BangguWu/ECANet)"
_FCA = "FcaNet paper (arXiv:2012.11879), ImageNet comparison table"
_FCA_README = "FcaNet official README (cfzd/FcaNet), reported"
_GE = "Gather-Excite paper (arXiv:1810.12348), ResNet-50 comparison (global extent)"
_GSOP_README = "GSoP official README (ImageNet, 100 - top-1 error)"

PAPER_MODELS: tuple[PaperModel, ...] = (
    # --- CIFAR-100: the C3 paper's Table 1 (ResNet-20/56/110, a wide ResNet; SE with reduction 8) ---
    PaperModel("resnet20_cifar100", "ResNet-20", "resnet20", None, "CIFAR-100", 0.28, _C3,
               _m(num_classes=100), macs=41.7e6, accuracy=67.73, accuracy_source=_C3),
    PaperModel("se_resnet20_cifar100", "ResNet-20 + SE", "resnet20", "se", "CIFAR-100", 0.28, _C3,
               _m(num_classes=100, attn_kwargs=_SE_R8), macs=41.8e6, accuracy=68.57, accuracy_source=_C3),
    PaperModel("c3_resnet20_cifar100", "ResNet-20 + C3", "resnet20", "c3", "CIFAR-100", 0.35, _C3,
               _m(num_classes=100), macs=46.0e6, accuracy=69.34, accuracy_source=_C3, macs_note=_C3_MACS),
    PaperModel("resnet56_cifar100", "ResNet-56", "resnet56", None, "CIFAR-100", 0.86, _C3,
               _m(num_classes=100), macs=128.2e6, accuracy=71.05, accuracy_source=_C3),
    PaperModel("se_resnet56_cifar100", "ResNet-56 + SE", "resnet56", "se", "CIFAR-100", 0.87, _C3,
               _m(num_classes=100, attn_kwargs=_SE_R8), macs=128.5e6, accuracy=72.00, accuracy_source=_C3),
    PaperModel("c3_resnet56_cifar100", "ResNet-56 + C3", "resnet56", "c3", "CIFAR-100", 0.93, _C3,
               _m(num_classes=100), macs=132.5e6, accuracy=72.27, accuracy_source=_C3, macs_note=_C3_MACS),
    PaperModel("resnet110_cifar100", "ResNet-110", "resnet110", None, "CIFAR-100", 1.74, _C3,
               _m(num_classes=100), macs=257.9e6, accuracy=72.01, accuracy_source=_C3),
    PaperModel("se_resnet110_cifar100", "ResNet-110 + SE", "resnet110", "se", "CIFAR-100", 1.76, _C3,
               _m(num_classes=100, attn_kwargs=_SE_R8), macs=258.5e6, accuracy=72.47, accuracy_source=_C3),
    PaperModel("c3_resnet110_cifar100", "ResNet-110 + C3", "resnet110", "c3", "CIFAR-100", 1.81, _C3,
               _m(num_classes=100), macs=262.2e6, accuracy=73.36, accuracy_source=_C3, macs_note=_C3_MACS),
    PaperModel("wrn22_10_cifar100", "Wide-ResNet", "wrn22_10", None, "CIFAR-100", 26.86, _C3,
               _m(num_classes=100), macs=3.84e9, accuracy=77.96, accuracy_source=_C3, note=_C3_WRN),
    PaperModel("se_wrn22_10_cifar100", "Wide-ResNet + SE", "wrn22_10", "se", "CIFAR-100", 27.26, _C3,
               _m(num_classes=100, attn_kwargs=_SE_R8), macs=3.84e9, accuracy=78.57, accuracy_source=_C3,
               note=_C3_WRN),
    PaperModel("c3_wrn22_10_cifar100", "Wide-ResNet + C3", "wrn22_10", "c3", "CIFAR-100", 26.93, _C3,
               _m(num_classes=100), macs=3.87e9, accuracy=78.34, accuracy_source=_C3, note=_C3_WRN),
    # --- ImageNet: SE, CBAM, BAM (ResNet v1, as their papers count) -----------------------------
    PaperModel("se_resnet50", "SE-ResNet-50", "resnet50", "se", "ImageNet", 28.09,
               "SE paper (arXiv:1709.01507) Table 2; CBAM paper Table 4", _m(stride_in_1x1=True), macs=3.87e9,
               accuracy=76.71, accuracy_source="SE paper Table 2 (re-implementation); ECA paper Table 3",
               note=_V1),
    PaperModel("cbam_resnet18", "ResNet-18 + CBAM", "resnet18", "cbam", "ImageNet", 11.78, _CBAM,
               macs=1.815e9),
    PaperModel("cbam_resnet34", "ResNet-34 + CBAM", "resnet34", "cbam", "ImageNet", 21.96, _CBAM,
               macs=3.665e9),
    PaperModel("cbam_resnet50", "ResNet-50 + CBAM", "resnet50", "cbam", "ImageNet", 28.09, _CBAM,
               _m(stride_in_1x1=True), macs=3.864e9, accuracy=77.34,
               accuracy_source=f"{_CBAM}; ECA paper Table 3",
               note=_V1),
    PaperModel("cbam_resnet101", "ResNet-101 + CBAM", "resnet101", "cbam", "ImageNet", 49.33, _CBAM,
               _m(stride_in_1x1=True), macs=7.581e9, accuracy=78.49,
               accuracy_source=f"{_CBAM}; ECA paper Table 3",
               note=_V1),
    PaperModel("bam_resnet50", "ResNet-50 + BAM", "resnet50", "bam", "ImageNet", 25.92,
               "BAM paper (arXiv:1807.06514), ImageNet-1K table", _m(stride_in_1x1=True), macs=3.94e9,
               accuracy=75.98,
               accuracy_source="BAM paper, ImageNet-1K table", note=_V1),
    # --- ImageNet: ResNeXt-50, SKNet-50 and ResNeXt-50 + SE/BAM/CBAM (the SKNet paper's table) ----
    PaperModel("resnext50", "ResNeXt-50 (32x4d)", "resnext50_32x4d", None, "ImageNet", 25.0, _SK,
               macs=4.24e9, accuracy=77.77, accuracy_source=_SK),
    PaperModel("sknet50", "SKNet-50", "resnext50_32x4d", "sk", "ImageNet", 27.5, _SK, macs=4.47e9,
               accuracy=79.21, accuracy_source=_SK, note="SK units in place of ResNeXt-50's 3x3 convolutions "
               "(M=2, G=32, r=16, L=32)"),
    PaperModel("se_resnext50", "SENet-50 (ResNeXt-50 + SE)", "resnext50_32x4d", "se", "ImageNet", 27.7, _SK,
               macs=4.25e9, accuracy=78.88, accuracy_source=_SK),
    PaperModel("bam_resnext50", "ResNeXt-50 + BAM", "resnext50_32x4d", "bam", "ImageNet", 25.4, _SK,
               macs=4.31e9),
    PaperModel("cbam_resnext50", "ResNeXt-50 + CBAM", "resnext50_32x4d", "cbam", "ImageNet", 27.7, _SK,
               macs=4.25e9),
    # --- ImageNet: ECA (parameters in 2^20 units, as ECA's Table 3) -------------------------------
    PaperModel("eca_resnet50", "ECA-Net50", "resnet50", "eca", "ImageNet", 24.37,
               "ECA paper (arXiv:1910.03151) Table 3; " + _ECA_README, params_unit=2**20, macs=3.86e9,
               accuracy=77.42, accuracy_source=_ECA_README + " (the paper's Table 3: 77.48)",
               macs_note="ECA's table copies ResNet-50's 3.86 G from the SE paper, a ResNet v1 count; the "
                         "released ECA-ResNet-50 (official models/eca_resnet.py) is v1.5, which counts "
                         "4.09 G; "
                         "stride_in_1x1=True gives 3.86 G",
               note="kernel sizes 3, 5, 5, 7 per stage, as the released eca_resnet50_k3557"),
    PaperModel("eca_resnet101", "ECA-Net101", "resnet101", "eca", "ImageNet", 42.49,
               "ECA paper Table 3; " + _ECA_README, params_unit=2**20, accuracy=78.65,
               accuracy_source=_ECA_README, note="kernel sizes 3, 3, 5, 7 per stage, as the released "
                                                 "eca_resnet101_k3357"),
    # --- ImageNet: FcaNet ---------------------------------------------------------------------------
    PaperModel("fcanet34", "FcaNet-34", "resnet34", "fca", "ImageNet", 21.95, _FCA, accuracy=75.07,
               accuracy_source=_FCA_README),
    PaperModel("fcanet50", "FcaNet-50", "resnet50", "fca", "ImageNet", 28.07, _FCA, accuracy=78.52,
               accuracy_source=_FCA_README),
    PaperModel("fcanet101", "FcaNet-101", "resnet101", "fca", "ImageNet", 49.29, _FCA, accuracy=79.64,
               accuracy_source=_FCA_README),
    PaperModel("fcanet152", "FcaNet-152", "resnet152", "fca", "ImageNet", 66.77, _FCA, accuracy=80.08,
               accuracy_source=_FCA_README),
    # --- ImageNet: SRM, GE, GSoP ----------------------------------------------------------------------
    PaperModel("srm_resnet50", "SRM-ResNet-50", "resnet50", "srm", "ImageNet", 25.62,
               "SRM paper (arXiv:1903.10829), ImageNet ResNet-50 table"),
    PaperModel("ge_theta_minus_resnet50", "GE-θ- ResNet-50", "resnet50", "ge_theta_minus", "ImageNet", 25.6,
               _GE,
               accuracy=77.86, accuracy_source=_GE, note="global extent"),
    PaperModel("ge_theta_resnet50", "GE-θ ResNet-50", "resnet50", "ge_theta", "ImageNet", 31.2, _GE,
               accuracy=78.00, accuracy_source=_GE,
               note="global extent: a depthwise gather over each stage's map"),
    PaperModel("ge_theta_plus_resnet50", "GE-θ+ ResNet-50", "resnet50", "ge_theta_plus", "ImageNet", 33.7,
               _GE,
               accuracy=78.12, accuracy_source=_GE, note="global extent"),
    PaperModel("gsop_net1_resnet50", "GSoP-Net1 (ResNet-50)", "resnet50", "gsop", "ImageNet", 28.29,
               "GSoP paper (arXiv:1811.12006), ImageNet table; FLOPs as ECA paper Table 3 quotes them",
               macs=6.18e9,
               accuracy=77.98, accuracy_source=_GSOP_README,
               macs_note="the official code (resnet.py) is ResNet v1.5 with the last stage at stride 1: "
                         "6.40 G; "
                         "the quoted 6.18 G is the ResNet v1 count (stride_in_1x1=True: 6.24 G, within 1%)",
               note="a GSoP block in the last block of each stage, the first with stride-2 reduction, "
                    "stage 4 at stride 1, as the official code"),
    PaperModel("gsop_net2_resnet50", "GSoP-Net2 (ResNet-50)", "resnet50", "gsop", "ImageNet", 58.28,
               "GSoP paper (arXiv:1811.12006), ImageNet table", _m(head="gsop"), accuracy=78.81,
               accuracy_source=_GSOP_README, note="no GSoP block in stage 4; iSQRT-COV head of 256 channels"),
    # --- CIFAR-100: DIANet ----------------------------------------------------------------------------
    PaperModel("dia_resnet164_cifar100", "DIA-ResNet-164", "resnet164", "dia", "CIFAR-100", 1.95,
               "DIANet paper (arXiv:1905.10671), CIFAR-100 table", _m(num_classes=100, preact=False),
               accuracy=76.67,
               accuracy_source="DIANet official README (gbup-group/DIANet), ResNet164 DIANet(r=4)",
               note="DIANet's 'ResNet164': the post-activation bottleneck network (official dia_resnet)"),
)

_BY_NAME = {m.name: m for m in PAPER_MODELS}


@functools.cache
def _counts(name: str, overrides: tuple) -> tuple[int, int]:
    import torch

    from .profile import count_macs, count_params

    entry = _BY_NAME[name]
    with torch.device("meta"):
        model = entry.create(**dict(overrides))
    return count_params(model), count_macs(model, (1, *entry.input_size))


def list_paper_models() -> list[str]:
    """The names of :data:`PAPER_MODELS`, in the table's order."""
    return [m.name for m in PAPER_MODELS]


def paper_model(name: str) -> PaperModel:
    """The :class:`PaperModel` called ``name``.

    Raises:
        ValueError: unknown name; the message lists the close matches.
    """
    key = normalize_name(name, "paper model")
    if key not in _BY_NAME:
        raise unknown_name_error("paper model", name, _BY_NAME)
    return _BY_NAME[key]


def create_paper_model(name: str, **overrides) -> nn.Module:
    """Build the paper model ``name`` (:func:`list_paper_models`) as its paper does;
    ``overrides`` replace options of :func:`chanattn.create_model` (``num_classes=10``).

    Raises:
        ValueError: unknown name.
    """
    if not isinstance(name, str):
        raise InputError(f"create_paper_model: name must be a str, got {type(name).__name__}")
    return paper_model(name).create(**overrides)
