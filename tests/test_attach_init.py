"""attach(init="identity") keeps a network's output, param_groups trains the new parameters at
their own learning rate, and attach places modules in torchvision's EfficientNet, MobileNetV3,
RegNet, ConvNeXt and timm's EfficientNet, ResNetV2 and CSPNet blocks."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import chanattn
from chanattn.models import attached_parameters, find_blocks
from chanattn.models.placement import BLOCK_PLACEMENTS, IdentityInit
from chanattn.registry import module_info
from conftest import randomise_norms

tvm = pytest.importorskip("torchvision.models")

#: Modules that replace a block's 3x3 convolution (sk, splat): attach refuses them (their weights
#: would replace pretrained ones), so there is no output for init="identity" to keep.
REPLACE_CONV = [n for n in chanattn.list_modules() if module_info(n).placement == "replace_conv"]
ATTACHABLE = [n for n in chanattn.list_modules() if n not in REPLACE_CONV]
PER_BLOCK = [n for n in ATTACHABLE if module_info(n).placement in BLOCK_PLACEMENTS]


def _identity_kept(model: nn.Module, name: str, x: torch.Tensor, **kwargs) -> list:
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model, report = chanattn.attach(model, name, init="identity", return_report=True, **kwargs)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    return report


def test_the_registry_lists_modules_of_each_placement():
    assert "se" in PER_BLOCK and "dia" in PER_BLOCK and "gsop" in PER_BLOCK
    assert set(REPLACE_CONV) == {"sk", "splat"}


#: On the full ResNet-50 (the issue's check): one module of each kind of construction (a gate from
#: pooled statistics, a 1-D convolution, channel and spatial gates, per-stage sizes, the last block of
#: each stage, a cell shared by a stage). Every per-block module runs on a one-block-per-stage
#: torchvision ResNet with the same Bottleneck block below, which costs a fraction of ResNet-50.
RESNET50_FEW = ["se", "eca", "cbam", "fca", "gsop", "dia"]


@pytest.mark.parametrize("name", RESNET50_FEW)
def test_identity_on_torchvision_resnet50(name):
    # random weights fixed by the seed, BN statistics made non-trivial, eval mode; 64 x 64 inputs
    # keep it fast (attach takes the feature sizes there)
    torch.manual_seed(0)
    model = tvm.resnet50()
    randomise_norms(model)
    report = _identity_kept(model, name, torch.randn(2, 3, 64, 64), input_size=64)
    assert report and all(isinstance(model.get_submodule(r.path), IdentityInit) for r in report)
    assert len(report) == (4 if module_info(name).placement == "last_block" else 16)


@pytest.mark.parametrize("name", PER_BLOCK)
def test_identity_for_every_per_block_module(name):
    torch.manual_seed(0)
    model = tvm.resnet.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 2])
    randomise_norms(model)
    report = _identity_kept(model, name, torch.randn(2, 3, 32, 32), input_size=32)
    assert report and all(isinstance(model.get_submodule(r.path), IdentityInit) for r in report)


@pytest.mark.parametrize("name", [n for n in ATTACHABLE if n not in PER_BLOCK])
def test_identity_for_the_other_placements_on_resnet18(name):
    # before a stage (c3), before every convolution (gct), after stages (bam, soca, encnet, danet_cam)
    torch.manual_seed(0)
    model = tvm.resnet18()
    randomise_norms(model)
    assert _identity_kept(model, name, torch.randn(2, 3, 64, 64), input_size=64)


@pytest.mark.parametrize("name", REPLACE_CONV)
def test_modules_that_replace_convolutions_are_refused(name):
    with pytest.raises(ValueError, match="replaces the blocks' 3x3 convolutions"):
        chanattn.attach(tvm.resnet18(), name, init="identity")


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init must be one of 'default', 'identity', got 'zeros'"):
        chanattn.attach(tvm.resnet18(), "se", init="zeros")


def test_training_moves_away_from_the_identity():
    # alpha = 0: the module's parameters get exactly zero gradient, alpha a non-zero one; after one
    # SGD step alpha is non-zero, the output changes, and the module's parameters get gradients.
    torch.manual_seed(0)
    model = chanattn.attach(tvm.resnet18(num_classes=10), "se", init="identity").eval()
    randomise_norms(model)
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    wrappers = [m for m in model.modules() if isinstance(m, IdentityInit)]
    assert len(wrappers) == 8
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()

    with torch.no_grad():
        before = model(x)
    step()
    for w in wrappers:
        assert w.alpha.grad.abs() > 0
        assert all(p.grad is None or not p.grad.any() for p in w.module.parameters())
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(x), before)
    assert all(w.alpha != 0 for w in wrappers)
    step()
    assert all(any(p.grad.abs().sum() > 0 for p in w.module.parameters()) for w in wrappers)


def test_identity_state_dict_keys_and_loading_a_default_attach():
    model = chanattn.attach(tvm.resnet18(), "eca", init="identity")
    keys = set(model.state_dict())
    assert {"layer1.0.attn.alpha", "layer1.0.attn.module.conv.weight"} <= keys
    assert "layer1.0.conv1.weight" in keys  # the backbone's keys are unchanged
    # a state dict saved from attach without init loads, with alpha = 1: the module as trained
    plain = chanattn.attach(tvm.resnet18(), "eca").eval()
    randomise_norms(plain)
    model.load_state_dict(plain.state_dict())
    assert all(m.alpha.item() == 1.0 for m in model.modules() if isinstance(m, IdentityInit))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain(x))


# --- param_groups ---------------------------------------------------------------------------------


def test_param_groups_separate_the_attached_parameters():
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=10)
    own = {id(p) for p in model.parameters()}
    model = chanattn.attach(model, "se", init="identity")
    new = {id(p) for _, p in attached_parameters(model)}
    assert new and not new & own and len(new | own) == len(list(model.parameters()))
    groups = chanattn.param_groups(model, lr=1e-3, new_lr=1e-1, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"pretrained", "attached", "attached_no_decay"}
    assert {id(p) for p in by_name["pretrained"]["params"]} == own
    assert {id(p) for p in by_name["attached_no_decay"]["params"]} == {
        id(m.alpha) for m in model.modules() if isinstance(m, IdentityInit)}
    assert (by_name["pretrained"]["lr"], by_name["attached"]["lr"]) == (1e-3, 1e-1)
    assert by_name["attached"]["weight_decay"] == 1e-4 and by_name["attached_no_decay"]["weight_decay"] == 0.0
    # torch.optim takes them; one step moves the parameters by their own learning rate
    opt = torch.optim.SGD(groups, lr=0.5)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-1, 1e-1]
    fc, alpha = model.fc.weight, model.layer1[0].attn.alpha
    start = (fc.detach().clone(), alpha.detach().clone())
    opt.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    opt.step()
    torch.testing.assert_close(fc.detach(), start[0] - 1e-3 * (fc.grad + 1e-4 * start[0]))
    torch.testing.assert_close(alpha.detach(), start[1] - 1e-1 * alpha.grad)


def test_param_groups_options_and_errors():
    model = chanattn.attach(tvm.resnet18(), "srm")  # SRM asks for no weight decay on its parameters
    model.conv1.weight.requires_grad_(False)
    groups = {g["name"]: g for g in chanattn.param_groups(model, lr=0.1, weight_decay=1e-4,
                                                          decay_norm_and_bias=False)}
    assert set(groups) == {"pretrained", "pretrained_no_decay", "attached_no_decay"}
    assert all(p.ndim > 1 for p in groups["pretrained"]["params"])
    assert all(g["lr"] == 0.1 for g in groups.values())
    assert not any(p is model.conv1.weight for g in groups.values() for p in g["params"])
    # the mark survives a deep copy
    assert len(chanattn.param_groups(copy.deepcopy(model), lr=0.1)) == 2
    with pytest.raises(ValueError, match="no parameter that chanattn.attach added"):
        chanattn.param_groups(chanattn.create_model("resnet8", attn="se"), lr=0.1)


# --- automatic placement in other families ------------------------------------------------------


def _tv_efficientnet():
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    return EfficientNet([MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(6, 3, 2, 16, 24, 2)], dropout=0.0,
                        num_classes=10)


def _tv_efficientnet_v2():
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig

    return EfficientNet([FusedMBConvConfig(1, 3, 1, 16, 16, 1), FusedMBConvConfig(4, 3, 2, 16, 24, 1),
                         MBConvConfig(4, 3, 2, 24, 32, 1)], dropout=0.0, num_classes=10, last_channel=64)


def _tv_regnet(se_ratio):
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams.from_init_params(depth=3, w_0=16, w_a=8, w_m=2, group_width=8, se_ratio=se_ratio)
    return RegNet(params, num_classes=10, stem_width=16)


def _tv_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)], num_classes=10)


def _timm(name, **kwargs):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _timm_resnetv2(**kwargs):
    timm = pytest.importorskip("timm")
    norm = functools.partial(timm.layers.GroupNormAct, num_groups=8)
    return lambda: timm.models.resnetv2.ResNetV2(layers=[1, 2], channels=(32, 64), stem_chs=16,
                                                 norm_layer=norm, num_classes=10, **kwargs)


def _timm_cspnet(block_type, stage_type, **stage_kwargs):
    timm = pytest.importorskip("timm")

    def build():
        cspnet = timm.models.cspnet
        stages = cspnet.CspStagesCfg(depth=(1, 2), out_chs=(32, 64), stride=2, block_type=block_type,
                                     stage_type=stage_type, **stage_kwargs)
        return cspnet.CspNet(cspnet.CspModelCfg(stem=cspnet.CspStemCfg(out_chs=16), stages=stages),
                             num_classes=10)
    return build


#: family -> (builder, blocks, the class of the blocks, where the first module goes, channels there)
FAMILIES = {
    # torchvision: every block gets one module at its SE's place (after the depthwise convolution,
    # before the projection); an existing SE is replaced
    "tv_efficientnet": (_tv_efficientnet, 3, "MBConv", "features.1.0.block.1", 16),
    "tv_efficientnet_v2": (_tv_efficientnet_v2, 3, "FusedMBConv", "features.1.0.block.attn", 16),
    "tv_mobilenet_v3": (lambda: tvm.mobilenet_v3_small(num_classes=10), 11, "InvertedResidual",
                        "features.1.block.1", 16),
    "tv_regnet_x": (lambda: _tv_regnet(None), 3, "ResBottleneckBlock", "trunk_output.block1.block1-0.f.attn",
                    16),
    "tv_regnet_y": (lambda: _tv_regnet(0.25), 3, "ResBottleneckBlock", "trunk_output.block1.block1-0.f.se",
                    16),
    "tv_convnext": (_tv_convnext, 3, "CNBlock", "features.1.0.block.attn", 16),
    # timm: the blocks' own slots (se, attn3, attn) or the end of the pre-activation branch
    "timm_efficientnet": (_timm("test_efficientnet"), 4, "EdgeResidual", "blocks.1.0.se", 64),
    "timm_mobilenetv3": (_timm("mobilenetv3_small_050"), 11, "DepthwiseSeparableConv", "blocks.0.0.se", 16),
    "timm_resnetv2_basic": (_timm_resnetv2(basic=True), 3, "PreActBasic", "stages.0.blocks.0.attn", 32),
    "timm_resnetv2_bottleneck": (_timm_resnetv2(), 3, "PreActBottleneck", "stages.0.blocks.0.attn", 32),
    "timm_resnetv2_v1": (_timm_resnetv2(preact=False), 3, "Bottleneck", "stages.0.blocks.0.attn", 32),
    # as cspresnet50, cspdarknet53 and cs3se_edgenet_x (its SE replaced), in small
    "timm_cspnet_bottle": (_timm_cspnet("bottle", "csp", expand_ratio=2.0, bottle_ratio=0.5,
                                        cross_linear=True), 3, "BottleneckBlock",
                           "stages.0.blocks.0.attn3", 32),
    "timm_cspnet_dark": (_timm_cspnet("dark", "dark", bottle_ratio=0.5), 3, "DarkBlock",
                         "stages.0.blocks.0.attn", 16),
    "timm_cspnet_edge": (_timm_cspnet("edge", "cs3", block_ratio=0.5, bottle_ratio=1.5, attn_layer="se"), 3,
                         "EdgeBlock", "stages.0.blocks.0.attn", 24),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["se", "eca", "cbam"])
def test_families_attach_forward_backward_and_identity(family, name):
    build, n_blocks, block_cls, first_path, first_channels = FAMILIES[family]
    torch.manual_seed(0)
    model = build()
    randomise_norms(model)
    x = torch.randn(2, 3, 32, 32)
    blocks = find_blocks(model)
    assert len(blocks) == n_blocks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = _identity_kept(model, name, x)
    assert len(report) == n_blocks and len({r.target for r in report}) == n_blocks
    assert (report[0].path, report[0].channels) == (first_path, first_channels)
    assert type(model.get_submodule(report[0].target)).__name__.startswith(
        {"PreActBasic": "TimmPreActBasic", "PreActBottleneck": "TimmPreActBottleneck",
         "Bottleneck": "TimmResNetV2Bottleneck"}.get(block_cls, block_cls))
    # the backbone's keys keep their values, except a replaced SE's, which move under <slot>.base.
    after = model.state_dict()
    for key, value in before.items():
        moved = [f"{r.path}.base.{key[len(r.path) + 1:]}" for r in report if key.startswith(f"{r.path}.")]
        assert torch.equal(after[moved[0] if moved else key], value), key
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the default init: the module alone in each place (a replaced SE is gone)
    model = chanattn.attach(build(), name)
    assert len([r for r in chanattn.attach(build(), name, return_report=True)[1]]) == n_blocks
    assert sum(isinstance(m, chanattn.AttentionModule) for m in model.modules()) % n_blocks == 0
    assert not any(type(m).__name__ in ("SqueezeExcitation", "SqueezeExcite") and not isinstance(
        m, chanattn.AttentionModule) for m in model.modules())
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_module_that_cannot_take_a_blocks_channels_names_it_and_why():
    # FcaNet's DCT grid needs a multiple of 16 channels; MobileNetV3-Small's second block has 72
    with pytest.raises(ValueError) as info:
        chanattn.attach(tvm.mobilenet_v3_small(), "fca")
    message = str(info.value)
    assert message.startswith("attach: 'fca' cannot go in features.2 (InvertedResidual, 72 channels)")
    assert "multiple of 16, got 72" in message and "\n" not in message


def test_an_existing_se_is_replaced_and_identity_keeps_it_as_the_base():
    torch.manual_seed(0)
    model = _tv_efficientnet()
    original = copy.deepcopy(model.state_dict())
    chanattn.attach(model, "eca", init="identity")
    slot = model.features[1][0].block[1]
    assert isinstance(slot, IdentityInit) and type(slot.base).__name__ == "SqueezeExcitation"
    # the original network's checkpoint still loads into the replaced SE (alpha and ECA are new)
    missing, unexpected = model.load_state_dict(original, strict=False)
    assert not unexpected and all(k.endswith(".alpha") or ".module." in k for k in missing)
    # with the default init, the SE's place holds ECA alone
    model = chanattn.attach(_tv_efficientnet(), "eca")
    assert type(model.features[1][0].block[1]).__name__ == "EfficientChannelAttention"


def test_readme_snippet_runs_and_prints_what_it_says():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- attach-identity:start -->")[1].split("<!-- attach-identity:end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    # every line followed by a "# <value>" comment line is an expression with that value
    lines, namespace, checked = code.splitlines(), {}, 0
    statements: list[str] = []
    for i, line in enumerate(lines):
        expected = lines[i + 1][2:] if i + 1 < len(lines) and re.match(r"# [\[(']", lines[i + 1]) else None
        if expected is not None:
            exec("\n".join(statements), namespace)
            statements = []
            assert repr(eval(line, namespace)) == expected, line
            checked += 1
        elif not line.startswith("# "):
            statements.append(line)
    exec("\n".join(statements), namespace)
    assert checked == 2
