"""Placement as a fact of each module's registration: create_model and attach put every module where
its paper (or official code) does, with its per-stage settings, and the same way."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

import pytest
import torch
from torch import nn

import chanattn
import chanattn.models
from chanattn.models import count_params
from chanattn.models import placement as placement_module
from chanattn.models.placement import AttnPlan, PreAttnConv2d
from chanattn.registry import PLACEMENTS, Stage
from conftest import randomise_norms

tvm = pytest.importorskip("torchvision.models")


def _modules_of(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    cls = chanattn.module_info(name).cls
    return [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]


def _meta(arch: str, attn=None, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return chanattn.create_model(arch, attn=attn, **kwargs)


# --- the registry --------------------------------------------------------------------------------


def test_every_module_registers_its_placement():
    for name in chanattn.list_modules():
        info = chanattn.module_info(name)
        assert info.placement in PLACEMENTS, name
        assert info.stage_kwargs is None or callable(info.stage_kwargs), name
        if info.placement != "block" or info.stage_kwargs is not None:
            assert info.placement_note, f"{name}: a placement other than the default says why"
    assert {chanattn.module_info(n).placement for n in ("c3", "gct", "bam", "sk", "dia", "gsop", "soca",
                                                        "encnet")} == set(PLACEMENTS) - {"block"}
    # nothing keyed on module names is left in the placement code
    assert not set(chanattn.list_modules()) & set(getattr(placement_module, "PLACEMENTS", {}))
    assert not hasattr(placement_module, "placement_of")


def test_model_files_are_discovered():
    package = chanattn.models
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            assert f"chanattn.models.{info.name}" in sys.modules, info.name
    assert {"resnet164", "resnet1001", "wrn22_10"} <= set(chanattn.list_models())


def test_imagenet_resnets_share_one_factory_signature():
    from chanattn.models import model_info

    names = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
             "wide_resnet50_2"]
    signatures = {str(inspect.signature(model_info(n).factory)) for n in names}
    assert len(signatures) == 1
    assert "stride_in_1x1=False" in signatures.pop()


# --- each placement, as the papers put them ---------------------------------------------------------


def test_c3_one_block_before_each_stage():
    # the official add_cross_neuron wraps each stage of the CIFAR ResNets with one C3 block, on
    # grids [16, 16, 8] (the stages' inputs: 16 channels at 32x32, 16 at 32x32, 32 at 16x16)
    model = chanattn.create_model("resnet20", attn="c3", num_classes=100)
    found = _modules_of(model, "c3")
    assert [n for n, _ in found] == ["layer1.0.pre_attn", "layer2.0.pre_attn", "layer3.0.pre_attn"]
    assert [(m.channels, m.spatial_size) for _, m in found] == [(16, (16, 16)), (16, (16, 16)), (32, (8, 8))]
    assert all(getattr(b, "attn", None) is None for b in model.modules() if hasattr(b, "pre_attn"))
    # on the block's input: branch and shortcut both see its output
    block, seen = model.layer2[0], {}
    block.pre_attn.register_forward_hook(lambda m, i, o: seen.__setitem__("c3", o))
    block.downsample.register_forward_hook(lambda m, i, o: seen.__setitem__("shortcut_in", i[0]))
    block.conv1.register_forward_hook(lambda m, i, o: seen.__setitem__("branch_in", i[0]))
    model.eval()(torch.randn(2, 3, 32, 32))
    assert seen["c3"] is seen["shortcut_in"] is seen["branch_in"]


def test_gct_before_every_convolution():
    # the official GCT-ResNet (PyTorch/resnet.py): GCT before every convolution, stem and shortcut too
    base = chanattn.create_model("resnet18")
    model = chanattn.create_model("resnet18", attn="gct")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(isinstance(m, PreAttnConv2d) for _, m in convs)
    assert all(m.attn.channels == m.in_channels for _, m in convs)
    assert model.conv1.attn.channels == 3 and isinstance(model.layer2[0].downsample[0], PreAttnConv2d)
    assert count_params(model) - count_params(base) == 3 * sum(m.in_channels for _, m in convs)
    # the convolutions keep their keys: a checkpoint without GCT loads, and GCT is the identity at init
    randomise_norms(base, affine=False)
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(k.endswith((".alpha", ".beta", ".gamma")) and ".attn." in k
                                                for k in result.missing_keys)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), base.eval()(x), rtol=0, atol=0)


def test_fca_dct_grid_is_each_stages_feature_size():
    # official FcaNet: c2wh = {64: 56, 128: 28, 256: 14, 512: 7} at 224 x 224
    def grids(model):
        return sorted({(m.dct_h, m.dct_w) for _, m in _modules_of(model, "fca")}, reverse=True)

    assert grids(_meta("resnet50", "fca")) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert grids(_meta("resnet50", "fca", input_size=112)) == [(28, 28), (14, 14), (7, 7)]
    assert grids(_meta("resnet20", "fca")) == [(32, 32), (16, 16), (8, 8)]
    assert grids(_meta("resnet8", "fca", input_size=8)) == [(8, 8), (7, 7)]  # at least the tables' 7 x 7


def test_ge_theta_global_extent_fixes_the_input_size():
    model = chanattn.create_model("resnet20", attn="ge_theta", num_classes=5, input_size=16)
    assert {m.spatial_size for _, m in _modules_of(model, "ge_theta")} == {(16, 16), (8, 8), (4, 4)}
    assert all(m.extent == 0 for _, m in _modules_of(model, "ge_theta"))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match="built for inputs of H x W = 16 x 16, got 32 x 32"):
        model(torch.randn(2, 3, 32, 32))
    # GE-θ- is global by default; an explicit extent still wins over the per-stage settings
    local = _meta("resnet20", "ge_theta_plus", attn_kwargs={"extent": 2})
    assert {m.extent for _, m in _modules_of(local, "ge_theta_plus")} == {2}


def test_gsop_as_the_official_networks():
    net1 = _meta("resnet50", "gsop")
    found = _modules_of(net1, "gsop")
    assert [n for n, _ in found] == ["layer1.2.attn", "layer2.3.attn", "layer3.5.attn", "layer4.2.attn"]
    assert [m.stride for _, m in found] == [2, 1, 1, 1]
    assert net1.layer4[0].conv2.stride == (1, 1)  # the official ResNet-50: stage 4 at stride 1
    assert net1.forward_features(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 2048, 14, 14)
    net2 = _meta("resnet50", "gsop", head="gsop")
    assert [n for n, _ in _modules_of(net2, "gsop")] == ["layer1.2.attn", "layer2.3.attn", "layer3.5.attn"]
    # another placement: the module only, the backbone untouched
    per_block = _meta("resnet50", "gsop", placement="block")
    assert len(_modules_of(per_block, "gsop")) == 16 and per_block.layer4[0].conv2.stride == (2, 2)


def test_soca_after_every_stage_and_encnet_at_the_head():
    soca = chanattn.create_model("resnet20", attn="soca")
    assert [n for n, _ in _modules_of(soca, "soca")] == ["layer1.3", "layer2.3", "layer3.3"]
    encnet = chanattn.create_model("resnet20", attn="encnet")
    assert [n for n, _ in _modules_of(encnet, "encnet")] == ["layer3.3"]
    resnet50 = _meta("resnet50", "encnet")
    assert [(n, m.channels) for n, m in _modules_of(resnet50, "encnet")] == [("layer4.3", 2048)]
    for model in (soca, encnet):
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_eca_kernels_of_the_released_models():
    def kernels(model):
        return [m.kernel_size for _, m in _modules_of(model, "eca")]

    # official README: eca_resnet50_k3557, eca_resnet101_k3357, eca_resnet18_k3577
    assert sorted(set(kernels(_meta("resnet50", "eca")))) == [3, 5, 7]
    assert [s[0].attn.kernel_size for s in (lambda m: (m.layer1, m.layer2, m.layer3, m.layer4))(
        _meta("resnet50", "eca"))] == [3, 5, 5, 7]
    r101 = _meta("resnet101", "eca")
    stages = (r101.layer1, r101.layer2, r101.layer3, r101.layer4)
    assert [s[0].attn.kernel_size for s in stages] == [3, 3, 5, 7]
    r18 = _meta("resnet18", "eca")
    assert [s[0].attn.kernel_size for s in (r18.layer1, r18.layer2, r18.layer3, r18.layer4)] == [3, 5, 7, 7]
    # elsewhere the adaptive rule (64 channels -> 3), and an explicit kernel wins
    assert set(kernels(_meta("resnet20", "eca"))) == {3}
    assert set(kernels(_meta("resnet50", "eca", attn_kwargs={"kernel_size": 9}))) == {9}


def test_resnet_v1_stride_in_the_first_1x1():
    v1 = _meta("resnet50", stride_in_1x1=True)
    v15 = _meta("resnet50")
    assert (v1.layer2[0].conv1.stride, v1.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert (v15.layer2[0].conv1.stride, v15.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert count_params(v1) == count_params(v15)
    assert v1.forward_features(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 2048, 7, 7)


def test_bottleneck_cifar_resnets():
    # Identity Mappings (He et al. 2016) Table 2: pre-activation ResNet-164, 1.7 M parameters
    assert round(count_params(_meta("resnet164")) / 1e6, 2) == 1.70
    # ResNet-1001: 111 bottlenecks per stage; per block BN(in) + 1x1 + BN + 3x3 + BN + 1x1
    def block(cin, p):
        return 2 * cin + cin * p + 2 * p + 9 * p * p + 2 * p + 4 * p * p

    expected = 3 * 16 * 9 + 10 * 256 + 10 + 2 * 256  # stem, classifier, the last BN
    for cin, p, proj in ((16, 16, 16 * 64), (64, 32, 64 * 128), (128, 64, 128 * 256)):
        expected += block(cin, p) + proj + 110 * block(4 * p, p)
    assert count_params(_meta("resnet1001")) == expected
    model = chanattn.create_model("resnet164", attn="dia", num_classes=100)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 100)
    post = chanattn.create_model("resnet164", preact=False)
    assert isinstance(post.layer1[0], chanattn.models.resnet.Bottleneck)
    with pytest.raises(ValueError, match=r"depth must be 9n \+ 2"):
        chanattn.models.cifar_resnet.CifarResNet(21, block="bottleneck")


# --- choosing another placement, options per stage -------------------------------------------------


def test_placement_override():
    model = chanattn.create_model("resnet20", attn="se", placement="stage_start")
    assert [n for n, _ in _modules_of(model, "se")] == ["layer1.0.pre_attn", "layer2.0.pre_attn",
                                                        "layer3.0.pre_attn"]
    per_block = chanattn.create_model("resnet20", attn="c3", placement="block")
    assert len(_modules_of(per_block, "c3")) == 9
    # a callable placed before every convolution
    calls = []
    chanattn.create_model("resnet8", attn=lambda c: calls.append(c) or nn.Identity(), placement="every_conv")
    assert calls == [3, 16, 16, 16, 32, 16, 32, 64, 32]
    with pytest.raises(ValueError, match="placement must be one of block, last_block"):
        chanattn.create_model("resnet20", attn="se", placement="everywhere")
    with pytest.raises(ValueError, match="kind 'branch'"):
        chanattn.create_model("resnet20", attn="se", placement="replace_conv")
    with pytest.raises(ValueError, match="shares its state"):
        chanattn.create_model("resnet20", attn="se", placement="shared_per_stage")
    with pytest.raises(ValueError, match="placement='block' given without attn"):
        chanattn.create_model("resnet20", placement="block")


def test_attn_kwargs_as_a_function_of_the_stage():
    seen: list[Stage] = []

    def per_stage(stage: Stage):
        seen.append(stage)
        return None if stage.index == 1 else {"rd_ratio": 1 / 4 if stage.last else 1 / 8}

    model = chanattn.create_model("resnet20", attn="se", attn_kwargs=per_stage)
    assert [(s.index, s.channels, s.size, s.num_blocks, s.num_stages, s.arch) for s in seen[::3]] == [
        (0, 16, (32, 32), 3, 3, "resnet20"), (1, 32, (16, 16), 3, 3, "resnet20"),
        (2, 64, (8, 8), 3, 3, "resnet20")]
    assert [b.attn is None for b in model.layer2] == [True] * 3  # None: no module in that stage
    assert [b.attn.rd_channels for b in model.layer1] == [2] * 3 and model.layer3[0].attn.rd_channels == 16
    # over the registered settings: FcaNet's per-stage grid stays, the reduction changes
    fca = _meta("resnet50", "fca", attn_kwargs=lambda s: {"rd_ratio": 1 / 8})
    assert {(m.dct_h, m.rd_channels * 8 == m.channels) for _, m in _modules_of(fca, "fca")} == \
        {(56, True), (28, True), (14, True), (7, True)}
    with pytest.raises(TypeError, match="returned int"):
        chanattn.create_model("resnet20", attn="se", attn_kwargs=lambda s: 3)


# --- attach reads the same facts -------------------------------------------------------------------


def _names_and_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items()
            if not n.endswith("num_batches_tracked")]


@pytest.mark.parametrize("name", ["c3", "gct", "fca", "ge_theta", "soca", "encnet", "eca", "gsop"])
def test_attach_to_torchvision_as_create_model(name):
    attached, report = chanattn.attach(tvm.resnet18(), name, return_report=True)
    built = chanattn.create_model("resnet18", attn=name)
    if name == "gsop":  # attach does not change the backbone: the stride of stage 4 stays
        assert attached.layer4[0].conv1.stride == (2, 2) and built.layer4[0].conv1.stride == (1, 1)
    assert _names_and_shapes(attached) == _names_and_shapes(built)
    for key, value in built.state_dict().items():
        if key.endswith("dct_weight"):  # FcaNet's fixed DCT bases, per stage at 224 x 224
            torch.testing.assert_close(attached.state_dict()[key], value, rtol=0, atol=0)
    where = {"c3": "before", "gct": "conv", "soca": "after", "encnet": "after"}.get(name, "block")
    assert {r.where for r in report} == {where}
    y = attached.eval()(torch.randn(1, 3, 224, 224) if name == "ge_theta" else torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 1000)


def test_attach_to_chanattn_models_uses_their_input_size():
    for arch, name in (("resnet20", "fca"), ("resnet20", "c3"), ("wrn16_4", "ge_theta_plus"),
                       ("mobilenet_v2", "c3"), ("plain_cnn", "gct"), ("resnet164", "soca")):
        attached = chanattn.attach(chanattn.create_model(arch), name)
        built = chanattn.create_model(arch, attn=name)
        assert _names_and_shapes(attached) == _names_and_shapes(built), (arch, name)


def test_attach_guesses_the_resnet_for_ecas_kernels_and_knows_its_limits():
    model = chanattn.attach(tvm.resnet50(), "eca")
    assert [s[0].attn.kernel_size for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == \
        [3, 5, 5, 7]
    resnext = chanattn.attach(tvm.resnext50_32x4d(), "eca")  # not a released ECA model: adaptive
    assert [s[0].attn.kernel_size for s in (resnext.layer1, resnext.layer4)] == [5, 7]
    timm = pytest.importorskip("timm")
    with pytest.raises(ValueError, match="no place for a module on its input"):
        chanattn.attach(timm.create_model("resnet18", pretrained=False), "c3")
    broken = tvm.resnet18()
    broken.fc = nn.Linear(123, 10)  # the probe's forward fails: the error says what to do
    with pytest.raises(ValueError, match="pass input_size="):
        chanattn.attach(broken, "fca")
    small = chanattn.attach(tvm.resnet18(), "fca", input_size=64)
    assert {m.dct_h for _, m in _modules_of(small, "fca")} == {16, 8, 7}


def test_attached_gct_is_the_identity_and_keeps_the_keys():
    model = tvm.mobilenet_v2()
    randomise_norms(model, affine=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        model, report = chanattn.attach(model, "gct", return_report=True)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert len(report) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 52
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    built = chanattn.create_model("mobilenet_v2", attn="gct")
    assert _names_and_shapes(model) == _names_and_shapes(built)


def test_plan_accepts_registered_names_only_through_the_registry():
    plan = AttnPlan("fca", None, arch="resnet50")
    assert plan.placement == "block" and plan.uses_sizes
    assert plan.options(plan.stage(0, 256, (56, 56), 3)) == {"dct_h": 56, "dct_w": 56}
    assert AttnPlan("se").options(Stage(0, 64)) == {}


def test_trainer_builds_the_model_for_the_data_sets_image_size():
    trainer = importlib.import_module("chanattn.training.trainer")
    from chanattn.training.config import TrainConfig

    cfg = TrainConfig(dataset="digits", arch="resnet8", attn="ge_theta")
    model = trainer.build_model(cfg, 10, 1, (8, 8))
    assert model.default_input_size == (8, 8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_replaced_convolutions_know_their_stage():
    seen = []
    model = chanattn.create_model("resnet8", attn="sk",
                                  attn_kwargs=lambda s: seen.append((s.index, s.size)) or {})
    assert seen == [(0, (32, 32)), (1, (16, 16)), (2, (8, 8))]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_the_recorded_config_rebuilds_the_placement():
    model = chanattn.create_model("resnet20", attn="c3", placement="block", input_size=16)
    cfg = model.chanattn_config
    assert cfg["model_kwargs"] == {"placement": "block", "input_size": [16, 16]}
    rebuilt = chanattn.create_model(cfg["arch"], attn=cfg["attn"], num_classes=cfg["num_classes"],
                                    **cfg["model_kwargs"])
    assert _names_and_shapes(rebuilt) == _names_and_shapes(model)
    gsop = chanattn.create_model("resnet50", attn="gsop")  # the paper's backbone option is recorded
    assert gsop.chanattn_config["model_kwargs"] == {"last_stride": 1}
    per_stage = chanattn.create_model("resnet20", attn="se", attn_kwargs=lambda s: {})
    assert per_stage.chanattn_config["attn_callable"]  # a function cannot be written down
