"""create_model: the paper figures, parity with torchvision, where each module goes, and every
architecture with every kind of module (forward, backward, eval determinism, torch.compile)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import chanattn
from chanattn.models import count_macs, count_params, model_info
from chanattn.models.cifar_resnet import CifarResNet, ZeroPadShortcut
from chanattn.models.placement import AttnAfter, AttnPlan
from chanattn.models.resnet import BasicBlock, Bottleneck, ResNet
from chanattn.modules.gsop import GSoP, GSoPHead
from chanattn.modules.selective_kernel import SelectiveKernel
from conftest import randomise_norms

# One module per placement rule and per kind (channel, spatial, hybrid, branch, communication).
REPRESENTATIVES = ["se", "cbam_spatial", "cbam", "bam", "sk", "c3", "dia", "gsop", "gct", "soca", "encnet"]

# Every model class in a small configuration: name -> (build(attn, num_classes), input size). The
# ImageNet bottleneck ResNets with one block per stage (the blocks and the stage builder of
# ResNet-50/101/152 and ResNeXt); every named architecture also runs in the smaller checks below.
SMALL = {
    "resnet20": (lambda attn, nc: chanattn.create_model("resnet20", attn, nc), 16),
    "wide_resnet": (lambda attn, nc: chanattn.create_model("wide_resnet", attn, nc, depth=10, widen_factor=1,
                                                           dropout=0.1), 16),
    "plain_cnn": (lambda attn, nc: chanattn.create_model("plain_cnn", attn, nc), 16),
    "resnet18": (lambda attn, nc: chanattn.create_model("resnet18", attn, nc, stem="cifar"), 16),
    "bottleneck": (lambda attn, nc: ResNet(Bottleneck, (1, 1, 1, 1), nc, attn=attn), 32),
    "resnext": (lambda attn, nc: ResNet(Bottleneck, (1, 1, 1, 1), nc, groups=32, width_per_group=4,
                                        attn=attn), 32),
    "mobilenet_v2": (lambda attn, nc: chanattn.create_model("mobilenet_v2", attn, nc, stem="cifar",
                                                            width_mult=0.5), 16),
    "preact_bottleneck": (lambda attn, nc: CifarResNet(11, nc, block="bottleneck", attn=attn), 16),
}


def test_representatives_cover_every_kind_and_placement():
    from chanattn.registry import PLACEMENTS

    assert {chanattn.module_info(n).kind for n in REPRESENTATIVES} == set(chanattn.KINDS)
    assert {chanattn.module_info(n).placement for n in REPRESENTATIVES} == set(PLACEMENTS)



def _check_train_and_eval(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Forward in train mode, every parameter gets a finite gradient; in eval mode the output is
    finite, the same twice, and the same for a sample alone as in the batch.

    The eval checks run in float64: with random weights and BN statistics, some deep stacks
    (c3 in all 16 blocks of ResNet-50) reach activations of 1e4, where float32 rounding alone
    differs between a batch and a single sample."""
    y = model.train()(x)
    assert y.shape == (x.shape[0], num_classes) and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    randomise_norms(model, affine=False)
    model.eval().double()
    x = x.double()
    with torch.no_grad():
        a, b, one = model(x), model(x), model(x[:1])
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    torch.testing.assert_close(one, a[:1], rtol=1e-7, atol=1e-9)


# --- the paper figures --------------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "params_m", "macs_m"),
                         [(20, 0.28, 41.7), (56, 0.86, 128.2), (110, 1.74, 257.9)])
def test_cifar_resnets_reproduce_the_paper_figures(depth, params_m, macs_m):
    model = chanattn.create_model(f"resnet{depth}", num_classes=100)
    assert round(count_params(model) / 1e6, 2) == params_m
    macs = count_macs(model, (1, 3, 32, 32)) / 1e6
    assert abs(macs - macs_m) / macs_m < 0.04, f"{macs:.1f} M MACs vs the paper's {macs_m}"


@pytest.mark.parametrize(("depth", "params_m"), [(20, 0.28), (56, 0.87), (110, 1.76)])
def test_se_column_with_the_reference_reduction(depth, params_m):
    # The SE column of the C3 paper's table; its reference code builds SE with reduction 8.
    base = chanattn.create_model(f"resnet{depth}", num_classes=100)
    se = chanattn.create_model(f"resnet{depth}", "se", num_classes=100, attn_kwargs={"rd_ratio": 1 / 8})
    n = (depth - 2) // 6
    per_stage = [2 * c * (c // 8) + c // 8 + c for c in (16, 32, 64)]  # two FCs with biases
    assert count_params(se) - count_params(base) == n * sum(per_stage)
    assert round(count_params(se) / 1e6, 2) == params_m


def test_option_a_shortcut_is_parameter_free_zero_padding():
    conv = chanattn.create_model("resnet110", num_classes=100)
    pad = chanattn.create_model("resnet110", num_classes=100, shortcut="pad")
    # option B's two 1x1 convolutions with their BNs: 16->32 and 32->64
    assert count_params(conv) - count_params(pad) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert round(count_params(pad) / 1e6, 2) == 1.73  # why option B is the default
    assert isinstance(pad.layer2[0].downsample, ZeroPadShortcut)
    x = torch.randn(2, 16, 7, 9)
    y = pad.layer2[0].downsample(x)
    assert y.shape == (2, 32, 4, 5)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert not y[:, 16:].any()


def test_resnet50_and_se_resnet50_figures():
    base = chanattn.create_model("resnet50")
    se = chanattn.create_model("resnet50", attn="se")
    assert count_params(base) == 25_557_032
    # SE (r = 16, FCs with biases) in every bottleneck: 3, 4, 6, 3 blocks of 256 ... 2048 channels
    added = sum(n * (2 * c * (c // 16) + c // 16 + c) for n, c in zip((3, 4, 6, 3), (256, 512, 1024, 2048)))
    assert count_params(se) == 25_557_032 + added
    assert (round(count_params(base) / 1e6, 2), round(count_params(se) / 1e6, 2)) == (25.56, 28.09)
    for model in (base, se):
        gmacs = count_macs(model, (1, 3, 224, 224)) / 1e9
        assert abs(gmacs - 4.1) / 4.1 < 0.02


def test_resnet101_152_and_wrn28_10_parameter_counts():
    # torchvision's published counts for ResNet-101/152; the WRN paper's 36.5 M for WRN-28-10
    assert count_params(chanattn.create_model("resnet101")) == 44_549_160
    assert count_params(chanattn.create_model("resnet152")) == 60_192_808
    assert round(count_params(chanattn.create_model("wrn28_10")) / 1e6, 1) == 36.5


def test_count_macs_closed_form_and_no_side_effects():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(),
                          nn.Linear(8 * 5 * 7, 4))
    model.train()
    assert count_macs(model, (1, 3, 5, 7)) == 3 * 8 * 9 * 5 * 7 + 8 * 5 * 7 * 4
    assert model.training
    assert not model[1].running_mean.any() and model[1].num_batches_tracked == 0
    # a batch of 2 counts twice
    assert count_macs(model, (2, 3, 5, 7)) == 2 * (3 * 8 * 9 * 5 * 7 + 8 * 5 * 7 * 4)


# --- torchvision as an independent reference ------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
                                  "mobilenet_v2"])
def test_same_structure_and_function_as_torchvision(arch):
    tv_models = pytest.importorskip("torchvision.models")
    ref = getattr(tv_models, arch)().eval()
    ours = chanattn.create_model(arch).eval()
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())  # strict: the same keys, buffers included
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_torchvision_checkpoint_loads_into_a_model_with_attention():
    tv_models = pytest.importorskip("torchvision.models")
    model = chanattn.create_model("resnet18", attn="eca")
    result = model.load_state_dict(tv_models.resnet18().state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".attn." in k for k in result.missing_keys)


# --- where each module goes ------------------------------------------------------------------


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def test_per_block_module_sits_after_the_last_bn_before_the_addition():
    model = chanattn.create_model("resnet20", attn="se").eval()
    blocks = _blocks(model)
    assert len(blocks) == 9
    assert [b.attn.channels for b in blocks] == [16] * 3 + [32] * 3 + [64] * 3
    block = model.layer2[0]  # the one with a downsampling shortcut
    seen = {}
    hooks = [block.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("bn2", o)),
             block.attn.register_forward_hook(lambda m, i, o: seen.update(attn_in=i[0], attn_out=o)),
             block.downsample.register_forward_hook(lambda m, i, o: seen.__setitem__("shortcut", o))]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
    for h in hooks:
        h.remove()
    assert torch.equal(seen["attn_in"], seen["bn2"])
    torch.testing.assert_close(y, torch.relu(seen["attn_out"] + seen["shortcut"]))


def test_bam_after_the_stages_followed_by_a_downsampling():
    from chanattn.modules.bam import BottleneckAttention

    cifar = chanattn.create_model("resnet20", attn="bam")
    assert [type(s[-1]).__name__ for s in (cifar.layer1, cifar.layer2, cifar.layer3)] == \
        ["BottleneckAttention", "BottleneckAttention", "BasicBlock"]
    assert not any(b.attn is not None for b in _blocks(cifar))
    imagenet = chanattn.create_model("resnet50", attn="bam")
    bams = [m for m in imagenet.modules() if isinstance(m, BottleneckAttention)]
    assert [m.channels for m in bams] == [256, 512, 1024]  # stages 1-3
    mobile = chanattn.create_model("mobilenet_v2", attn="bam")
    wrapped = [i for i, m in enumerate(mobile.features) if isinstance(m, AttnAfter)]
    assert wrapped == [1, 3, 6, 13]  # before each stride-2 stage: 16, 24, 32 and 96 channels
    assert [mobile.features[i].attn.channels for i in wrapped] == [16, 24, 32, 96]


def test_sk_replaces_the_3x3_convolution():
    basic = chanattn.create_model("resnet20", attn="sk")
    for block in _blocks(basic):
        assert isinstance(block.conv1, SelectiveKernel) and isinstance(block.bn1, nn.Identity)
        assert block.conv1.stride == block.stride and isinstance(block.conv2, nn.Conv2d)
    bottleneck = chanattn.create_model("resnet50", attn="sk")
    for block in _blocks(bottleneck):
        assert isinstance(block.conv2, SelectiveKernel) and block.conv2.stride == block.stride
        assert isinstance(block.conv1, nn.Conv2d) and isinstance(block.conv3, nn.Conv2d)
    mobile = chanattn.create_model("mobilenet_v2", attn="sk", width_mult=0.5)
    sks = [m for m in mobile.modules() if isinstance(m, SelectiveKernel)]
    assert len(sks) == 17 and all(sk.groups == sk.channels for sk in sks)  # depthwise


def test_dia_shares_one_cell_per_stage():
    base = chanattn.create_model("resnet20")
    model = chanattn.create_model("resnet20", attn="dia")
    cells = []
    for stage in (model.layer1, model.layer2, model.layer3):
        stage_cells = {id(b.attn.cell) for b in stage}
        assert len(stage_cells) == 1
        assert [b.attn.index for b in stage] == [0, 1, 2]
        cells.append(stage[0].attn.cell)
    assert len({id(c) for c in cells}) == 3
    assert count_params(model) - count_params(base) == sum(count_params(c) for c in cells)


def test_gsop_in_the_last_block_of_each_stage_and_the_covariance_head():
    net1 = chanattn.create_model("resnet20", attn="gsop")
    for stage in (net1.layer1, net1.layer2, net1.layer3):
        assert [isinstance(b.attn, GSoP) for b in stage] == [False, False, True]
    # the official code: the reduction with stride 2 in the first stage only
    strides = [s[-1].attn.conv_reduce.stride for s in (net1.layer1, net1.layer2, net1.layer3)]
    assert strides == [(2, 2), (1, 1), (1, 1)]
    # GSoP-Net2 (the covariance head): no GSoP block in the last stage, as the official main.py
    model = chanattn.create_model("resnet20", attn="gsop", head="gsop", head_kwargs={"rd_channels": 16})
    assert [[isinstance(b.attn, GSoP) for b in s] for s in (model.layer1, model.layer2, model.layer3)] == \
        [[False, False, True], [False, False, True], [False, False, False]]
    assert isinstance(model.pool, GSoPHead) and model.fc.in_features == 16 * 17 // 2
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_callable_attention_and_errors():
    calls = []

    def factory(channels, scale=1.0):
        calls.append((channels, scale))
        return nn.Identity()

    chanattn.create_model("resnet8", attn=factory, attn_kwargs={"scale": 2.0})
    assert calls == [(16, 2.0), (32, 2.0), (64, 2.0)]
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet5'.*resnet50"):
        chanattn.create_model("resnet5")
    with pytest.raises(ValueError, match=r"unknown option\(s\) stem .*shortcut"):
        chanattn.create_model("resnet20", stem="cifar")
    with pytest.raises(ValueError, match="unknown module 'sé'|unknown module"):
        chanattn.create_model("resnet20", attn="sé")
    with pytest.raises(ValueError, match="attn_kwargs"):
        chanattn.create_model("resnet20", attn_kwargs={"rd_ratio": 0.5})
    with pytest.raises(ValueError, match="multiple of 16, got 24"):
        chanattn.create_model("mobilenet_v2", attn="fca")
    with pytest.raises(ValueError, match="depth must be 6n"):
        chanattn.create_model("wide_resnet", depth=27)


def test_list_models_and_info():
    names = chanattn.list_models()
    for arch in ["resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "wide_resnet",
                 "plain_cnn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                 "resnext50_32x4d", "mobilenet_v2"]:
        assert arch in names
    assert names.index("resnet8") < names.index("resnet18") < names.index("resnet110")
    assert chanattn.list_models("cifar") == [n for n in names if model_info(n).family == "cifar"]
    assert model_info("resnet50").num_classes == 1000 and model_info("resnet20").num_classes == 10
    with pytest.raises(ValueError, match="family"):
        chanattn.list_models("vision")


# --- every architecture, every kind ---------------------------------------------------------------


@pytest.mark.parametrize("attn", [None, *chanattn.list_modules()])
def test_resnet8_on_8x8_grey_digits_with_every_module(attn):
    # built for 8 x 8 inputs: the global gathers of ge_theta/ge_theta_plus take that size only
    model = chanattn.create_model("resnet8", attn=attn, in_chans=1, input_size=8)
    _check_train_and_eval(model, torch.randn(2, 1, 8, 8), 10)


@pytest.mark.parametrize("attn", [None, *REPRESENTATIVES])
@pytest.mark.parametrize("arch", list(SMALL))
def test_every_model_class_with_every_kind(arch, attn):
    build, size = SMALL[arch]
    if attn == "soca" and arch in ("bottleneck", "resnext"):
        # SoCA's Newton-Schulz on 2048 x 2048 matrices in float64 takes minutes here: the placement
        # ("group_end", after every stage) with a cheap module instead; SoCA itself runs in the
        # other model classes
        attn = AttnPlan("se", placement="group_end")
    _check_train_and_eval(build(attn, 5), torch.randn(2, 3, size, size), 5)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                  "resnext50_32x4d", "mobilenet_v2"])
def test_imagenet_architectures_take_32x32_inputs(arch):
    model = chanattn.create_model(arch, attn="se", num_classes=3)
    y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _check_compiled(model: nn.Module, x: torch.Tensor) -> None:
    """torch.compile (eager backend) gives the eager output and gradients, in train mode (batch
    statistics, the DIA stage state handed from block to block). Compiled, every module runs its
    formula (the compiler fuses it): the output is compared with the formula's in eager mode."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    torch.manual_seed(1)  # the same dropout masks
    y = compiled(x)
    torch.manual_seed(1)
    with chanattn.fast_paths(False):
        ref = model(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


RESNET8_COMPILE = ["cbam_spatial", "cbam", "c3", "gct", "soca"]


@pytest.mark.parametrize("attn", RESNET8_COMPILE)
def test_compile_in_resnet8(attn):
    _check_compiled(chanattn.create_model("resnet8", attn=attn), torch.randn(2, 3, 8, 8))


# One module per model class (CifarResNet: resnet8 above), together covering every placement rule
# and every kind.
COMPILE_CASES = [("wide_resnet", "sk"), ("plain_cnn", "c3"), ("mobilenet_v2", "bam"), ("resnet18", "dia"),
                 ("preact_bottleneck", "encnet"),
                 ("bottleneck", "gsop"), ("resnext", "se")]


def test_compile_cases_cover_every_model_class_kind_and_placement():
    assert {a for a, _ in COMPILE_CASES} | {"resnet20"} == set(SMALL)
    modules = {m for _, m in COMPILE_CASES} | set(RESNET8_COMPILE)
    assert {chanattn.module_info(m).kind for m in modules} == set(chanattn.KINDS)
    assert modules >= set(REPRESENTATIVES)


@pytest.mark.parametrize(("arch", "attn"), COMPILE_CASES)
def test_compile_every_model_class(arch, attn):
    build, size = SMALL[arch]
    _check_compiled(build(attn, 10), torch.randn(2, 3, size, size))


def test_backbone_initialisation_leaves_the_attention_modules_alone():
    # the backbone's Kaiming init must not touch the modules' own initialisation
    def constant_conv(channels):
        conv = nn.Conv2d(channels, channels, 1)
        nn.init.constant_(conv.weight, 0.5)
        return conv

    model = chanattn.create_model("resnet8", attn=constant_conv)
    for block in _blocks(model):
        assert torch.equal(block.attn.weight, torch.full_like(block.attn.weight, 0.5))
    assert float(model.layer1[0].conv1.weight.detach().std()) > 0  # the backbone's were initialised
    head = chanattn.create_model("resnet8", head="gsop").pool
    # PyTorch's default init, uniform within 1/sqrt(fan_in), not the backbone's Kaiming normal
    assert float(head.conv_reduce.weight.detach().abs().max()) <= 1 / math.sqrt(64)
    gct = chanattn.create_model("resnet8", attn="gct")
    modules = [m for m in gct.modules() if isinstance(m, chanattn.module_info("gct").cls)]
    assert len(modules) == sum(isinstance(m, nn.Conv2d) for m in gct.modules())  # one before each convolution
    for module in modules:
        assert not module.gamma.any() and not module.beta.any()


def test_cli_models_lists_every_architecture(capsys):
    from chanattn.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for arch in chanattn.list_models():
        assert arch in out
    assert f"{len(chanattn.list_models())} architectures" in out
    assert main(["models", "--family", "cifar", "--params"]) == 0
    out = capsys.readouterr().out
    assert "resnet56" in out and "855,770" in out and "resnet50 " not in out
    assert main(["models", "--family", "vision"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["chanattn models: error: argument --family: invalid choice: 'vision' (choose from "
                   "'cifar', 'imagenet', 'mobile', 'plain') (see chanattn models --help)"]
    from chanattn.cli.models import FAMILIES
    from chanattn.models import FAMILIES as LIBRARY_FAMILIES

    assert FAMILIES == LIBRARY_FAMILIES  # the CLI's copy, kept so that --help imports no torch
