"""chanattn.load_pretrained: timm's checkpoints and the official repositories' key layouts.

timm: timm's own models are built here (pretrained=False, random seeded weights, BatchNorm running
statistics randomised too) and chanattn's model, after conversion, gives the same outputs in eval
mode. Official repositories: no downloads here; each test writes a state dict whose key names and
shapes are those of the official code (the repository and file are named beside each builder),
converts it, loads it strictly, and checks that values arrive where they belong; CBAM's pool order
and GSoP's triangle order are checked numerically against small independent computations.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import chanattn
from chanattn.errors import CheckpointError
from chanattn.pretrained import (
    PRETRAINED_WEIGHTS,
    TIMM_MODELS,
    TIMM_REFUSED,
    convert_state_dict,
    load_pretrained,
    timm_equivalent,
    triu_from_tril_order,
)

timm = pytest.importorskip("timm")


def _randomize_bn_(model: nn.Module, seed: int = 1) -> None:
    """BatchNorm statistics and affine parameters away from their initial 0/1, so that a BN loaded
    into the wrong place changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _chanattn_for_timm(name: str) -> nn.Module:
    kwargs = timm_equivalent(name)
    return chanattn.create_model(kwargs.pop("arch"), **kwargs)


# ------------------------------------------------------------------------------------------ timm
# one model per structure: basic and bottleneck SE, SE-ResNeXt, the deep and tiered stems with the
# average-pool shortcut (ECA), SK in place of ResNeXt's 3x3
TIMM_NUMERIC = ["seresnet18", "seresnet50", "seresnext50_32x4d", "ecaresnet50d", "ecaresnet50t",
                "skresnext50_32x4d"]


@pytest.mark.parametrize("name", TIMM_NUMERIC)
def test_timm_outputs_equal_after_conversion(name):
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False).eval()
    _randomize_bn_(theirs)
    ours = _chanattn_for_timm(name).eval()
    assert load_pretrained(ours, "timm", theirs.state_dict()) is ours
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TIMM_MODELS))
def test_every_timm_equivalent_takes_its_keys_and_shapes(name):
    """The models too large to run here: every key and shape fits (meta device, no weights)."""
    with torch.device("meta"):
        theirs = timm.create_model(name, pretrained=False)
        ours = _chanattn_for_timm(name)
    converted = convert_state_dict(ours, "timm", theirs.state_dict())
    expected = ours.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


@pytest.mark.parametrize("name", ["skresnet18", "ecaresnet26t", "ecaresnet50d_pruned", "seresnext101_32x4d"])
def test_timm_models_chanattn_cannot_build_are_refused_with_the_reason(name):
    with pytest.raises(CheckpointError, match=name) as info:
        timm_equivalent(name)
    assert TIMM_REFUSED[name] in str(info.value)


def test_timm_split_input_sk_fails_on_shapes_naming_both():
    """skresnet18's branches convolve half of the input: a mis-shaped key, with both shapes."""
    with torch.device("meta"):
        theirs = timm.create_model("skresnet18", pretrained=False)
        ours = chanattn.create_model("resnet18", attn="sk")
    shapes = r"checkpoint \[\d+, \d+, 3, 3\], model \[\d+, \d+, 3, 3\]"
    with pytest.raises(CheckpointError, match=r"mis-shaped.*" + shapes + ".*split_input=True"):
        convert_state_dict(ours, "timm", theirs.state_dict())


def test_timm_table_matches_timm_pretrained_cfg():
    """Every timm row of the URL table is a pretrained tag timm knows, with its hf_hub_id."""
    for row in PRETRAINED_WEIGHTS:
        if row.source != "timm":
            continue
        assert row.name in timm.list_pretrained(row.name.split(".")[0] + ".*")
        cfg = timm.models.get_pretrained_cfg(row.name)
        assert cfg.hf_hub_id == f"timm/{row.name}"
        assert row.url == f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"


# ------------------------------------------------------------------------- official state dicts
def _bn(prefix: str, c: int) -> dict[str, torch.Size]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _tensors(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g)
    return out


def _torchvision_backbone(arch: str, **kwargs) -> dict[str, torch.Size]:
    """The keys of the official ResNets' backbones: every official ResNet here (CBAM/BAM, ECA, SRM,
    FcaNet, GSoP, DIANet's blocks) uses torchvision's layout (conv1, bn1, layerN.M.convK/bnK,
    downsample.0/1, fc), which is chanattn's plain model's."""
    with torch.device("meta"):
        plain = chanattn.create_model(arch, **kwargs)
    return {k: v.shape for k, v in plain.state_dict().items()}


def _blocks(shapes: dict) -> dict[str, int]:
    """block prefix -> output channels (the last BN of its residual branch)."""
    out = {}
    for k, s in shapes.items():
        parts = k.split(".")
        if len(parts) == 4 and parts[0].startswith("layer") and parts[2] in ("bn2", "bn3") \
                and parts[3] == "weight":
            prefix = ".".join(parts[:2])
            if parts[2] == "bn3" or f"{prefix}.bn3.weight" not in shapes:
                out[prefix] = s[0]
    return out


def _with_dp_prefix(state: dict) -> dict:
    """The official training scripts save the DataParallel-wrapped model: 'module.' on every key."""
    return {f"module.{k}": v for k, v in state.items()}


def cbam_official(arch: str) -> dict[str, torch.Size]:
    # Jongchan/attention-module MODELS/model_resnet.py: block.cbam = CBAM(C, 16); MODELS/cbam.py:
    # ChannelGate.mlp = Sequential(Flatten, Linear(C, C//16), ReLU, Linear(C//16, C));
    # SpatialGate.spatial = BasicConv(2, 1, 7): .conv (no bias), .bn
    shapes = _torchvision_backbone(arch)
    for b, c in _blocks(shapes).items():
        g = f"{b}.cbam.ChannelGate.mlp"
        shapes.update({f"{g}.1.weight": (c // 16, c), f"{g}.1.bias": (c // 16,),
                       f"{g}.3.weight": (c, c // 16), f"{g}.3.bias": (c,),
                       f"{b}.cbam.SpatialGate.spatial.conv.weight": (1, 2, 7, 7)})
        shapes.update(_bn(f"{b}.cbam.SpatialGate.spatial.bn", 1))
    return shapes


def bam_official(arch: str, expansion: int) -> dict[str, torch.Size]:
    # Jongchan/attention-module MODELS/model_resnet.py: bam1/bam2/bam3 = BAM(64/128/256 * expansion);
    # MODELS/bam.py: channel_att.gate_c.{gate_c_fc_0 Linear, gate_c_bn_1 BatchNorm1d, gate_c_fc_final};
    # spatial_att.gate_s.{gate_s_conv_reduce0 1x1, gate_s_bn_reduce0, gate_s_conv_di_{0,1} 3x3 dilated,
    # gate_s_bn_di_{0,1}, gate_s_conv_final 1x1 to 1}, every conv and Linear with a bias
    shapes = _torchvision_backbone(arch)
    for i, planes in enumerate((64, 128, 256), 1):
        c = planes * expansion
        r = c // 16
        p = f"bam{i}"
        g = f"{p}.channel_att.gate_c"
        shapes.update({f"{g}.gate_c_fc_0.weight": (r, c), f"{g}.gate_c_fc_0.bias": (r,),
                       f"{g}.gate_c_fc_final.weight": (c, r), f"{g}.gate_c_fc_final.bias": (c,)})
        shapes.update(_bn(f"{p}.channel_att.gate_c.gate_c_bn_1", r))
        s = f"{p}.spatial_att.gate_s"
        shapes.update({f"{s}.gate_s_conv_reduce0.weight": (r, c, 1, 1), f"{s}.gate_s_conv_reduce0.bias": (r,),
                       f"{s}.gate_s_conv_di_0.weight": (r, r, 3, 3), f"{s}.gate_s_conv_di_0.bias": (r,),
                       f"{s}.gate_s_conv_di_1.weight": (r, r, 3, 3), f"{s}.gate_s_conv_di_1.bias": (r,),
                       f"{s}.gate_s_conv_final.weight": (1, r, 1, 1), f"{s}.gate_s_conv_final.bias": (1,)})
        for bn in ("gate_s_bn_reduce0", "gate_s_bn_di_0", "gate_s_bn_di_1"):
            shapes.update(_bn(f"{s}.{bn}", r))
    return shapes


def eca_official(arch: str, kernels: tuple[int, ...]) -> dict[str, torch.Size]:
    # BangguWu/ECANet models/eca_resnet.py: block.eca = eca_layer(C, k_size[stage]);
    # models/eca_module.py: eca_layer.conv = Conv1d(1, 1, k, bias=False)
    shapes = _torchvision_backbone(arch)
    for b in _blocks(shapes):
        shapes[f"{b}.eca.conv.weight"] = (1, 1, kernels[int(b[5]) - 1])
    return shapes


def srm_official(arch: str) -> dict[str, torch.Size]:
    # hyunjaelee410/style-based-recalibration-module models/resnet.py: block.rclb = SRMLayer(C);
    # models/recalibration_modules.py: SRMLayer.cfc (C, 2), SRMLayer.bn = BatchNorm2d(C)
    shapes = _torchvision_backbone(arch)
    for b, c in _blocks(shapes).items():
        shapes[f"{b}.rclb.cfc"] = (c, 2)
        shapes.update(_bn(f"{b}.rclb.bn", c))
    return shapes


def gct_official() -> dict[str, torch.Size]:
    # z-x-yang/GCT PyTorch/resnet.py (maskrcnn-benchmark layout): stem.conv1 = Sequential(GCT(3), Conv2d),
    # stem.bn1; block convK = Sequential(GCT(in), Conv2d); downsample = Sequential(GCT(in), Conv2d, BN);
    # PyTorch/GCT.py: alpha, gamma, beta of shape (1, C, 1, 1)
    shapes = {}
    for k, s in _torchvision_backbone("resnet50").items():
        parts = k.split(".")
        if k == "conv1.weight":
            conv = "stem.conv1"
        elif len(parts) == 4 and parts[2].startswith("conv"):
            conv = ".".join(parts[:3])
        elif len(parts) == 5 and parts[2] == "downsample" and parts[3] == "0":
            conv = ".".join(parts[:3])
        else:
            if k.startswith("bn1."):
                k = "stem." + k
            elif len(parts) == 5 and parts[2] == "downsample":  # its BN: downsample.1 -> downsample.2
                k = ".".join([*parts[:3], "2", parts[4]])
            shapes[k] = s
            continue
        shapes[f"{conv}.1.weight"] = s
        for p in ("alpha", "gamma", "beta"):
            shapes[f"{conv}.0.{p}"] = (1, s[1], 1, 1)
    return shapes


#: cfzd/FcaNet model/layer.py get_freq_indices('top16'): the 16 (x, y) frequencies on the 7 x 7 grid
FCA_TOP16_X = [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2]
FCA_TOP16_Y = [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2]


def fca_official_dct(c: int, size: int) -> torch.Tensor:
    """cfzd/FcaNet model/layer.py MultiSpectralDCTLayer.get_dct_filter, from its formula: channel
    group i (of C / 16) is cos(pi u (x + 1/2) / N) cos(pi v (y + 1/2) / N) / N, times sqrt(2)
    for each non-zero frequency, with (u, v) the top16 table scaled by N // 7."""
    filt = torch.zeros(c, size, size, dtype=torch.float64)
    pos = torch.arange(size, dtype=torch.float64) + 0.5
    part = c // 16
    for i, (u, v) in enumerate(zip(FCA_TOP16_X, FCA_TOP16_Y)):
        u, v = u * (size // 7), v * (size // 7)
        bu = torch.cos(torch.pi * u * pos / size) / size ** 0.5 * (2 ** 0.5 if u else 1.0)
        bv = torch.cos(torch.pi * v * pos / size) / size ** 0.5 * (2 ** 0.5 if v else 1.0)
        filt[i * part:(i + 1) * part] = bu[:, None] * bv[None, :]
    return filt.float()


def fca_official(arch: str, planes_of_stage=(64, 128, 256, 512)) -> dict[str, torch.Size]:
    # cfzd/FcaNet model/fcanet.py: torchvision ResNet with block.att = MultiSpectralAttentionLayer(C,
    # c2wh[planes], c2wh[planes]), c2wh = {64: 56, 128: 28, 256: 14, 512: 7}; model/layer.py:
    # att.dct_layer.weight buffer (C, h, w), att.fc = Sequential(Linear(C, C//16, bias=False), ReLU,
    # Linear(C//16, C, bias=False), Sigmoid)
    shapes = _torchvision_backbone(arch)
    c2wh = {64: 56, 128: 28, 256: 14, 512: 7}
    for b, c in _blocks(shapes).items():
        size = c2wh[planes_of_stage[int(b[5]) - 1]]
        shapes.update({f"{b}.att.dct_layer.weight": (c, size, size), f"{b}.att.fc.0.weight": (c // 16, c),
                       f"{b}.att.fc.2.weight": (c, c // 16)})
    return shapes


def gsop_official(net2: bool, gsop_blocks: list[str]) -> dict[str, torch.Size]:
    # ZilinGao/Global-Second-order-Pooling-Convolutional-Networks torchvision/models/resnet.py
    # Bottleneck (attention '1', att_dim 128): conv_for_DR (128, C, 1, 1) with bias, bn_for_DR, row_bn
    # (128), row_conv_group (512, 1, 128, 1) with bias, fc_adapt_channels (C, 512, 1, 1) with bias;
    # GSoP-Net2: layer_reduce (256, 2048, 1, 1) no bias, layer_reduce_bn, fc (classes, 256 * 257 / 2).
    # Which blocks carry one is main.py's --attpos; here the blocks chanattn's placement uses.
    shapes = _torchvision_backbone("resnet50", last_stride=1)
    blocks = _blocks(shapes)
    for b in gsop_blocks:
        c = blocks[b]
        shapes.update({f"{b}.conv_for_DR.weight": (128, c, 1, 1), f"{b}.conv_for_DR.bias": (128,),
                       f"{b}.row_conv_group.weight": (512, 1, 128, 1), f"{b}.row_conv_group.bias": (512,),
                       f"{b}.fc_adapt_channels.weight": (c, 512, 1, 1), f"{b}.fc_adapt_channels.bias": (c,)})
        shapes.update(_bn(f"{b}.bn_for_DR", 128))
        shapes.update(_bn(f"{b}.row_bn", 128))
    if net2:
        shapes["layer_reduce.weight"] = (256, 2048, 1, 1)
        shapes.update(_bn("layer_reduce_bn", 256))
        shapes["fc.weight"] = (1000, 256 * 257 // 2)
    return shapes


def dia_official(num_classes: int = 100) -> dict[str, torch.Size]:
    # gbup-group/DIANet models/cifar/dia_resnet.py ResNet(164, block_name='Bottleneck'): layerN =
    # Attention(ModuleList of blocks, N): .ModuleList.M.<torchvision block keys>, .lstm = LSTMCell(C, C, 1)
    # with w_ih.0 / w_hh.0 = small_cell: .seq = Sequential(Linear(C, C//4), ReLU, Linear(C//4, 4C))
    shapes = {}
    for k, s in _torchvision_backbone("resnet164", preact=False, num_classes=num_classes).items():
        parts = k.split(".")
        if parts[0].startswith("layer"):
            k = ".".join([parts[0], "ModuleList", *parts[1:]])
        shapes[k] = s
    for n, c in ((1, 64), (2, 128), (3, 256)):
        for w in ("w_ih", "w_hh"):
            p = f"layer{n}.lstm.{w}.0.seq"
            shapes.update({f"{p}.0.weight": (c // 4, c), f"{p}.0.bias": (c // 4,),
                           f"{p}.2.weight": (4 * c, c // 4), f"{p}.2.bias": (4 * c,)})
    return shapes


def _load(source: str, model: nn.Module, shapes: dict) -> dict[str, torch.Tensor]:
    official = _tensors(shapes)
    load_pretrained(model, source, _with_dp_prefix(official))
    return official


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.detach().reshape(-1), b.reshape(-1))


def test_cbam_official_layout_loads_strictly_and_permutes_the_pool_order():
    model = chanattn.create_model("resnet18", attn="cbam").eval()
    official = _load("cbam", model, cbam_official("resnet18"))
    gate = model.layer2[1].attn
    assert _same(gate.channel.fc1.weight, official["layer2.1.cbam.ChannelGate.mlp.1.weight"])
    assert _same(model.layer2[1].bn2.running_var, official["layer2.1.bn2.running_var"])
    # the official spatial gate, computed here: sigmoid(BN(conv7x7(cat[max_c x, mean_c x]))) on the
    # official weight, against chanattn's spatial gate on the converted one
    p = "layer2.1.cbam.SpatialGate.spatial"
    x = torch.randn(2, 128, 6, 5)
    pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
    z = F.conv2d(pooled, official[f"{p}.conv.weight"], padding=3)
    z = F.batch_norm(z, official[f"{p}.bn.running_mean"], official[f"{p}.bn.running_var"],
                     official[f"{p}.bn.weight"], official[f"{p}.bn.bias"], False, 0.0, 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(gate.spatial(x), x * torch.sigmoid(z), rtol=1e-5, atol=1e-6)
        # and the whole CBAM: official ChannelGate (Linear MLP on avg and max) then the spatial gate
        fc = "layer2.1.cbam.ChannelGate.mlp"

        def mlp(v):
            h = F.relu(F.linear(v, official[f"{fc}.1.weight"], official[f"{fc}.1.bias"]))
            return F.linear(h, official[f"{fc}.3.weight"], official[f"{fc}.3.bias"])

        y = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
        pooled = torch.cat([y.amax(1, keepdim=True), y.mean(1, keepdim=True)], 1)
        z = F.batch_norm(F.conv2d(pooled, official[f"{p}.conv.weight"], padding=3),
                         official[f"{p}.bn.running_mean"], official[f"{p}.bn.running_var"],
                         official[f"{p}.bn.weight"], official[f"{p}.bn.bias"], False, 0.0, 1e-5)
        torch.testing.assert_close(gate(x), y * torch.sigmoid(z), rtol=1e-5, atol=1e-6)


def test_cbam_without_the_permutation_would_differ():
    """The pool-order check above has teeth: the unpermuted kernel gives another gate."""
    w = torch.randn(1, 2, 7, 7)
    x = torch.randn(1, 8, 5, 5)
    a = F.conv2d(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1), w, padding=3)
    b = F.conv2d(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1), w, padding=3)
    assert not torch.allclose(a, b)


def test_bam_official_layout_loads_strictly_after_each_stage():
    model = chanattn.create_model("resnet18", attn="bam")
    official = _load("bam", model, bam_official("resnet18", expansion=1))
    # bam2 follows layer2 (two blocks): chanattn's layer2[2]
    assert _same(model.layer2[2].channel_att[0].weight,
                 official["bam2.channel_att.gate_c.gate_c_fc_0.weight"])
    assert _same(model.layer3[2].spatial_att[9].bias,
                 official["bam3.spatial_att.gate_s.gate_s_conv_final.bias"])


def test_eca_official_layout_loads_strictly():
    model = chanattn.create_model("resnet50", attn="eca")
    # the released ECA-Net50: eca_resnet50_k3557 (BangguWu/ECANet README)
    official = _load("eca", model, eca_official("resnet50", (3, 5, 5, 7)))
    assert _same(model.layer4[2].attn.conv.weight, official["layer4.2.eca.conv.weight"])


def test_srm_official_layout_loads_strictly():
    model = chanattn.create_model("resnet18", attn="srm")
    official = _load("srm", model, srm_official("resnet18"))
    assert _same(model.layer3[0].attn.cfc, official["layer3.0.rclb.cfc"])
    assert _same(model.layer3[0].attn.bn.running_mean, official["layer3.0.rclb.bn.running_mean"])


def test_gct_official_layout_loads_strictly():
    model = chanattn.create_model("resnet50", attn="gct", stride_in_1x1=True)  # the official one is v1
    official = _load("gct", model, gct_official())
    assert _same(model.conv1.attn.alpha, official["stem.conv1.0.alpha"])
    assert _same(model.conv1.weight, official["stem.conv1.1.weight"])
    assert _same(model.layer2[0].downsample[0].attn.gamma, official["layer2.0.downsample.0.gamma"])
    assert _same(model.layer2[0].downsample[0].weight, official["layer2.0.downsample.1.weight"])
    assert _same(model.layer2[0].downsample[1].running_var, official["layer2.0.downsample.2.running_var"])
    assert _same(model.layer3[4].conv2.attn.beta, official["layer3.4.conv2.0.beta"])


def test_fca_official_layout_loads_strictly_and_its_dct_is_ours():
    model = chanattn.create_model("resnet34", attn="fca")
    shapes = fca_official("resnet34")
    ours = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("dct_weight")}
    official = _tensors(shapes)
    for k in shapes:
        if k.endswith("dct_layer.weight"):
            official[k] = fca_official_dct(shapes[k][0], shapes[k][1])
    load_pretrained(model, "fca", official)
    assert _same(model.layer2[1].attn.fc1.weight, official["layer2.1.att.fc.0.weight"])
    # the official buffer, computed here from its formula, is chanattn's own for every block
    for k, v in ours.items():
        torch.testing.assert_close(v, official[k.replace("attn.dct_weight", "att.dct_layer.weight")],
                                   rtol=0, atol=1e-6)


def _gsop_blocks(model: nn.Module) -> list[str]:
    return sorted({k.split(".attn.")[0] for k in model.state_dict() if ".attn." in k})


def test_gsop_net1_official_layout_loads_strictly():
    model = chanattn.create_model("resnet50", attn="gsop")
    official = _load("gsop", model, gsop_official(False, _gsop_blocks(model)))
    assert _same(model.layer1[2].attn.conv_reduce.weight, official["layer1.2.conv_for_DR.weight"])
    assert _same(model.layer3[5].attn.row_conv.bias, official["layer3.5.row_conv_group.bias"])


def test_gsop_net2_official_layout_loads_and_the_classifier_follows_the_triangle():
    model = chanattn.create_model("resnet50", attn="gsop", head="gsop").eval()
    official = _load("gsop", model, gsop_official(True, _gsop_blocks(model)))
    assert _same(model.avgpool.conv_reduce.weight, official["layer_reduce.weight"])
    # a symmetric matrix vectorised both ways: the official lower triangle row by row
    # (MPNCOV.Triuvec: nonzero of ones(d, d).triu().t() flattened), ours upper row by row
    d = 256
    a = torch.randn(3, d, d)
    sym = a + a.transpose(1, 2)
    mask = torch.ones(d, d).triu().t().reshape(-1)
    official_features = sym.reshape(3, -1)[:, mask.nonzero().squeeze(1)]
    rows, cols = torch.triu_indices(d, d)
    our_features = sym[:, rows, cols]
    # in float64: sums of 32896 products, exact enough to compare entry by entry
    w, b = official["fc.weight"].double(), official["fc.bias"].double()
    expected = F.linear(official_features.double(), w, b)
    with torch.no_grad():
        got = F.linear(our_features.double(), model.fc.weight.double(), model.fc.bias.double())
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        # and unpermuted it would not be the same classifier
        assert not torch.allclose(F.linear(our_features.double(), w, b), expected, atol=1e-2)


def test_triangle_order_small():
    # 3 x 3: ours (0,0) (0,1) (0,2) (1,1) (1,2) (2,2); official (0,0) (1,0) (1,1) (2,0) (2,1) (2,2)
    assert triu_from_tril_order(3).tolist() == [0, 1, 3, 2, 4, 5]


def test_dia_official_layout_loads_strictly_into_every_block_of_the_stage():
    model = chanattn.create_model("resnet164", attn="dia", preact=False, num_classes=100)
    official = _load("dia", model, dia_official())
    cell = official["layer2.lstm.w_hh.0.seq.2.weight"]
    assert _same(model.layer2[0].attn.cell.w_hh[2].weight, cell)
    assert _same(model.layer2[17].attn.cell.w_hh[2].weight, cell)
    assert _same(model.layer3[5].conv2.weight, official["layer3.ModuleList.5.conv2.weight"])


# ------------------------------------------------------------------------------------ errors
def test_a_key_that_does_not_map_names_the_key_and_the_source():
    model = chanattn.create_model("resnet18", attn="srm")
    state = _tensors(srm_official("resnet18"))
    state["layer1.0.rclb.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"load_pretrained\('srm'\): key 'layer1\.0\.rclb\.extra'.*"
                                              r"renamed 'layer1\.0\.attn\.extra'"):
        load_pretrained(model, "srm", state)


def test_a_shape_mismatch_names_the_key_and_both_shapes():
    model = chanattn.create_model("resnet50", attn="eca")  # released kernels 3, 5, 5, 7
    state = _tensors(eca_official("resnet50", (3, 3, 3, 3)))  # eca_resnet50's default k_size
    with pytest.raises(CheckpointError, match=r"'layer2\.0\.eca\.conv\.weight' -> "
                                              r"layer2\.0\.attn\.conv\.weight: "
                                              r"checkpoint \[1, 1, 3\], model \[1, 1, 5\]"):
        load_pretrained(model, "eca", state)


def test_missing_keys_are_named():
    model = chanattn.create_model("resnet18", attn="srm")
    state = _tensors(srm_official("resnet18"))
    del state["layer4.1.rclb.cfc"]
    with pytest.raises(CheckpointError, match=r"1 missing key \('layer4\.1\.attn\.cfc'\)"):
        load_pretrained(model, "srm", state)


def test_a_checkpoint_of_another_module_says_which_model_to_build():
    model = chanattn.create_model("resnet18", attn="se")
    with pytest.raises(CheckpointError, match=r"create_model\(arch, attn='cbam'\)"):
        load_pretrained(model, "cbam", _tensors(cbam_official("resnet18")))


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        load_pretrained(nn.Linear(1, 1), "nope", {})


# ------------------------------------------------------------------------------- files and URLs
def test_loads_a_file_saved_as_the_official_checkpoint_dict(tmp_path):
    model = chanattn.create_model("resnet18", attn="srm")
    official = _tensors(srm_official("resnet18"))
    path = tmp_path / "srm.pth.tar"
    torch.save({"epoch": 90, "state_dict": _with_dp_prefix(official), "best_prec1": 77.1}, path)
    load_pretrained(model, "srm", path)
    assert _same(model.layer1[1].attn.cfc, official["layer1.1.rclb.cfc"])


def test_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": nn.ReLU()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_pretrained(nn.Linear(1, 1), "timm", path)


def test_no_network_is_one_line_naming_the_url_and_the_local_way(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with torch.device("meta"):
        model = chanattn.create_model("resnet50", attn="fca")
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, "fca", "url")
    text = str(info.value)
    assert "\n" not in text
    assert "https://github.com/cfzd/FcaNet/releases/download/v1.0/fca50.pth" in text
    assert "load_pretrained(model, 'fca', 'path/to/fca50.pth')" in text


def test_download_goes_through_the_hub_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    official = _tensors(srm_official("resnet18"))
    calls = []

    def fake_download(url, dst, *args, **kwargs):
        calls.append(url)
        torch.save({"state_dict": official}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    url = "https://example.org/weights/srm_resnet18.pth?dl=1"
    for _ in range(2):
        load_pretrained(chanattn.create_model("resnet18", attn="srm"), "srm", url)
    assert calls == [url]
    assert (tmp_path / "hub" / "checkpoints" / "srm_resnet18.pth").is_file()


def test_rows_without_a_stable_url_say_where_the_weights_are():
    with torch.device("meta"):
        model = chanattn.create_model("resnet50", attn="gct")
    with pytest.raises(CheckpointError, match="no stable download URL.*Google Drive"):
        load_pretrained(model, "gct", None)


def test_url_table_builds_every_model():
    for row in PRETRAINED_WEIGHTS:
        kwargs = dict(row.build)
        with torch.device("meta"):
            chanattn.create_model(kwargs.pop("arch"), **kwargs)
        assert row.where


# ---------------------------------------------------------------------- ResNet-D options vs timm
@pytest.mark.parametrize("stem,timm_stem", [("deep", "deep"), ("deep_tiered", "deep_tiered")])
def test_deep_stem_and_avg_down_have_timms_keys(stem, timm_stem):
    from timm.models.resnet import Bottleneck, ResNet

    with torch.device("meta"):
        theirs = ResNet(Bottleneck, [3, 4, 6, 3], stem_width=32, stem_type=timm_stem, avg_down=True)
        ours = chanattn.create_model("resnet50", stem=stem, avg_down=True)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


def test_readme_snippet_runs_offline():
    """The README's first snippet under 'Published weights' (converting a timm model built here)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Published weights", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})


def test_models_built_in_the_official_orders_take_the_tensors_unpermuted():
    """cbam's pool_order="max_mean" and GSoPHead's triangle="lower" are the official orders: the
    converter leaves the kernel and the classifier as they are."""
    model = chanattn.create_model("resnet18", attn="cbam", attn_kwargs={"pool_order": "max_mean"})
    official = _load("cbam", model, cbam_official("resnet18"))
    assert _same(model.layer1[0].attn.spatial.conv.weight,
                 official["layer1.0.cbam.SpatialGate.spatial.conv.weight"])
    with torch.device("meta"):
        ref = chanattn.create_model("resnet50", attn="gsop", head="gsop")
    model = chanattn.create_model("resnet50", attn="gsop", head="gsop", head_kwargs={"triangle": "lower"})
    official = _load("gsop", model, gsop_official(True, _gsop_blocks(ref)))
    assert _same(model.fc.weight, official["fc.weight"])
