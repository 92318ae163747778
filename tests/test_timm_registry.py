"""chanattn's models in timm's registry (``import chanattn.timm``) and the timm/torchvision API of the
backbones: pretrained_cfg, reset_classifier, forward_head, features_only with feature_info, and
torchvision's detection backbones (IntermediateLayerGetter, BackboneWithFPN) on a chanattn ResNet."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import chanattn
from chanattn.errors import InputError, NoPretrainedWeights

timm = pytest.importorskip("timm")
chanattn_timm = pytest.importorskip("chanattn.timm")

# (timm name, extra create_model keywords, input side): one per backbone class and name kind
KINDS = [
    ("chanattn_resnet18_se", {}, 64),                                   # arch x attn, ImageNet ResNet
    ("chanattn_resnet20", {"attn": "eca"}, 32),                         # arch, attn by keyword
    ("chanattn_resnet164", {"attn": "se", "preact": True}, 32),         # pre-activation bottlenecks
    ("chanattn_wrn16_4", {"attn": "cbam"}, 32),                         # Wide-ResNet
    ("chanattn_mobilenet_v2_eca", {"stem": "cifar", "width_mult": 0.5}, 32),  # MobileNetV2
    ("chanattn_plain_cnn", {"attn": "clocal"}, 32),                     # plain CNN
    ("chanattn_se_resnet20_cifar100", {}, 32),                          # a paper model
]


def _x(side: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, side, side)


def test_importing_chanattn_does_not_import_timm():
    code = ("import sys, torch, chanattn\n"
            "m = chanattn.create_model('resnet8', attn='se', num_classes=0)\n"
            "m.reset_classifier(3, 'max'); m(torch.randn(1, 3, 8, 8))\n"
            "print('timm' in sys.modules, 'torchvision' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_the_registered_names():
    from chanattn.models.papers import PAPER_MODELS

    names = chanattn_timm.register()  # again: nothing new
    assert names == list(chanattn_timm.ENTRIES) and len(set(names)) == len(names)
    assert sorted(timm.list_models("chanattn_*")) == sorted(names)
    expected = {f"chanattn_{arch}" for arch in chanattn.list_models()}
    expected |= {f"chanattn_{p.name}" for p in PAPER_MODELS}
    expected |= {f"chanattn_{a}_{m}" for a in chanattn_timm.COMMON_ARCHS for m in chanattn_timm.COMMON_ATTNS
                 if (a, m) != ("mobilenet_v2", "fca")}
    assert set(names) == expected
    assert len(names) < 200  # every pair is reachable through chanattn_<arch> with attn=
    assert not any(n in timm.list_models(exclude_filters="chanattn_*") for n in names)
    for p in PAPER_MODELS:  # a paper name builds what create_paper_model builds
        entry = chanattn_timm.ENTRIES[f"chanattn_{p.name}"]
        assert (entry.arch, entry.attn, dict(entry.options)) == (p.arch, p.attn, dict(p.options))


@pytest.mark.parametrize("name, kwargs, side", KINDS, ids=[k[0] for k in KINDS])
def test_create_forward_backward_and_api(name, kwargs, side):
    model = timm.create_model(name, num_classes=5, **kwargs)
    x = _x(side)
    y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    # timm's API
    assert model.num_classes == 5
    assert model.get_classifier() is model.get_submodule(model.get_classifier(True))
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 5
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert len(cfg["input_size"]) == 3 and len(cfg["mean"]) == len(cfg["std"]) == 3
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), model(x))


def test_pretrained_cfg_of_the_families_and_paper_models():
    from chanattn.models.registry import CIFAR100_MEAN, IMAGENET_MEAN

    with torch.device("meta"):
        r50 = timm.create_model("chanattn_resnet50_eca")
        paper = timm.create_model("chanattn_se_resnet20_cifar100")
        mobile = timm.create_model("chanattn_mobilenet_v2")
    cfg = r50.pretrained_cfg
    assert (cfg["input_size"], cfg["num_classes"], cfg["mean"], cfg["first_conv"], cfg["classifier"]) == \
        ((3, 224, 224), 1000, IMAGENET_MEAN, "conv1", "fc")
    assert r50.num_classes == 1000 and r50.num_features == r50.inplanes == 2048
    cfg = paper.pretrained_cfg  # the paper's data: CIFAR-100, 32x32 (C3 paper Table 1)
    assert (cfg["input_size"], cfg["num_classes"], cfg["mean"]) == ((3, 32, 32), 100, CIFAR100_MEAN)
    assert paper.num_classes == 100 and paper.fc.out_features == 100
    assert paper.chanattn_config["attn_kwargs"]["rd_ratio"] == 1 / 8
    assert mobile.pretrained_cfg["classifier"] == mobile.get_classifier(True) == "classifier.1"
    data = timm.data.resolve_data_config(model=paper)  # what timm's scripts read
    assert data["input_size"] == (3, 32, 32) and data["mean"] == CIFAR100_MEAN
    # chanattn.create_model gives the same fields without timm's registry
    plain = chanattn.create_model("resnet20", attn="se", num_classes=100)
    for key in ("input_size", "first_conv", "classifier", "num_classes", "interpolation"):
        assert plain.pretrained_cfg[key] == cfg[key], key
    small = chanattn.create_model("resnet18", stem="cifar", in_chans=1)
    assert small.pretrained_cfg["input_size"] == (1, 32, 32)


def test_every_common_module_on_resnet20_and_every_common_arch_on_meta():
    for attn in chanattn_timm.COMMON_ATTNS:
        model = timm.create_model(f"chanattn_resnet20_{attn}", num_classes=3)
        model(_x(32)).sum().backward()
        assert model.chanattn_config["attn"] == attn
    for arch in chanattn_timm.COMMON_ARCHS:
        model = timm.create_model(f"chanattn_{arch}_se", device="meta")
        assert next(model.parameters()).is_meta and model.chanattn_config["arch"] == arch


@pytest.mark.parametrize("name, kwargs, side", KINDS, ids=[k[0] for k in KINDS])
def test_features_only(name, kwargs, side):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    info = model.feature_info
    torch.manual_seed(0)  # the same weights
    net = timm.create_model(name, features_only=True, **kwargs).eval()
    x = _x(side)
    with torch.no_grad():
        outs = net(x)
    assert net.feature_info.channels() == [f["num_chs"] for f in info]
    assert net.feature_info.reduction() == [f["reduction"] for f in info]
    assert net.feature_info.module_name() == [f["module"] for f in info]
    assert len(outs) == len(info)
    for out, f in zip(outs, info):
        assert out.shape == (2, f["num_chs"], side // f["reduction"], side // f["reduction"]), f
    if not name.startswith("chanattn_mobilenet"):  # the last level is forward_features' output
        with torch.no_grad():
            torch.testing.assert_close(outs[-1], model.forward_features(x))
    assert "classifier" not in net.pretrained_cfg and "num_classes" not in net.pretrained_cfg
    some = timm.create_model(name, features_only=True, out_indices=(1, -1), **kwargs)
    assert some.feature_info.channels() == [info[1]["num_chs"], info[-1]["num_chs"]]
    assert [o.shape[1] for o in some(x)] == some.feature_info.channels()


def test_feature_classes_and_feature_errors():
    x = _x(64, 1)
    net = timm.create_model("chanattn_resnet18_cbam", features_only=True, feature_cls="dict",
                            out_indices=(0, 4))
    assert sorted(net(x)) == ["0", "4"]
    hook = timm.create_model("chanattn_mobilenet_v2", features_only=True, feature_cls="hook",
                             out_indices=(1, 2))
    assert [o.shape[1] for o in hook(x)] == [24, 32]
    with pytest.raises(InputError, match="need.*features_only=True"):
        timm.create_model("chanattn_resnet20", out_indices=(1, 2))
    with pytest.raises(InputError, match="feature_cls must be one of"):
        timm.create_model("chanattn_resnet20", features_only=True, feature_cls="fx")


def test_reset_classifier_and_global_pool(tmp_path):
    model = timm.create_model("chanattn_resnet8", attn="eca")
    keys = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("fc.")}
    x = _x(32)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4) and model.num_classes == 4
    model.reset_classifier(6, global_pool="catavgmax")  # [mean, max]: twice the features
    assert model.head_hidden_size == 2 * model.num_features and model(x).shape == (2, 6)
    assert {k: v.shape for k, v in model.state_dict().items() if not k.startswith("fc.")} == keys
    model.eval()
    feats = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True),
                               torch.cat([feats.mean((2, 3)), feats.amax((2, 3))], 1))
    # the recorded config follows: the model saves and loads as it now is
    loaded = chanattn.from_pretrained(chanattn.save_pretrained(model, tmp_path / "m"))
    torch.testing.assert_close(loaded(x), model(x))
    model.reset_classifier(0)  # no classifier: pooled features
    assert isinstance(model.get_classifier(), nn.Identity) and model(x).shape == (2, 2 * model.num_features)
    model.reset_classifier(0, global_pool="")  # no pooling either: the feature map
    assert model(x).shape == feats.shape
    with pytest.raises(InputError, match="needs num_classes=0"):
        model.reset_classifier(3, global_pool="")
    with pytest.raises(InputError, match="global_pool must be one of"):
        model.reset_classifier(3, global_pool="median")
    # as timm's creation keywords
    assert timm.create_model("chanattn_resnet8", num_classes=0)(x).shape == (2, 64)
    assert timm.create_model("chanattn_resnet8", global_pool="max").global_pool_type() == "max"
    on_meta = timm.create_model("chanattn_resnet8", device="meta", dtype=torch.float16)
    on_meta.reset_classifier(3)
    assert on_meta.fc.weight.is_meta and on_meta.fc.weight.dtype == torch.float16


def test_a_gsop_head_can_be_replaced():
    model = chanattn.create_model("resnet8", attn="gsop", head="gsop", num_classes=3)
    assert model.global_pool_type() == "gsop"
    model.reset_classifier(5, global_pool="avg")
    assert model(_x(16)).shape == (2, 5) and model.chanattn_config["model_kwargs"]["head"] == "avg"
    with pytest.raises(InputError, match="head='gsop' is its own pooling"):
        chanattn.create_model("resnet8", head="gsop", global_pool="max")


def test_drop_rate():
    model = timm.create_model("chanattn_resnet8", drop_rate=0.5)
    assert model.drop_rate == 0.5
    x = _x(16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    feats = model.forward_features(x).detach()
    torch.manual_seed(1)
    a = model.forward_head(feats, pre_logits=True)
    assert (a == 0).any() and torch.allclose(a[a != 0], 2 * feats.mean((2, 3))[a != 0])
    mobile = timm.create_model("chanattn_mobilenet_v2", drop_rate=0.3, device="meta")
    assert mobile.classifier[0].p == 0.3  # MobileNetV2's own classifier dropout


def test_pretrained_true_is_a_clear_error_and_a_weight_file_loads(tmp_path):
    with pytest.raises(NoPretrainedWeights, match="chanattn_resnet50_eca: chanattn publishes no pretrained"):
        timm.create_model("chanattn_resnet50_eca", pretrained=True)
    assert issubclass(NoPretrainedWeights, RuntimeError)
    assert issubclass(NoPretrainedWeights, chanattn.ChanattnError)
    mine = chanattn.create_model("resnet8", attn="se")
    folder = chanattn.save_pretrained(mine, tmp_path / "mine")
    model = timm.create_model("chanattn_resnet8", attn="se", pretrained=True,
                              pretrained_cfg_overlay={"file": str(folder / "model.safetensors")})
    x = _x(16)
    torch.testing.assert_close(model.eval()(x), mine.eval()(x))


def test_bad_keywords_say_what_to_do():
    with pytest.raises(InputError, match="fixes the attention.*chanattn_resnet20', attn="):
        timm.create_model("chanattn_resnet20_eca", attn="se")
    with pytest.raises(InputError, match="unknown option.*drop_path_rate"):
        timm.create_model("chanattn_resnet20", drop_path_rate=0.1)
    model = timm.create_model("chanattn_se_resnet20_cifar100", attn_kwargs={"gate_layer": "hard_sigmoid"})
    assert model.chanattn_config["attn_kwargs"] == {"rd_ratio": 1 / 8, "gate_layer": "hard_sigmoid"}


def test_torchvision_detection_backbone_on_a_chanattn_resnet():
    tv = pytest.importorskip("torchvision")
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor

    model = chanattn.create_model("resnet18", attn="se").eval()
    assert model.inplanes == 512
    # the children run in forward order: torchvision's getter gives our stages' outputs
    getter = IntermediateLayerGetter(model, {"layer2": "a", "layer4": "b"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(getter(x)["b"], model.forward_features(x))
    fpn = BackboneWithFPN(model, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64, 128, 256, 512], 32)
    out = fpn(x)
    assert [tuple(v.shape) for v in out.values()] == [(1, 32, 16 // 2**i, 16 // 2**i) for i in range(5)]
    # what resnet_fpn_backbone runs on torchvision's ResNets (reads inplanes, freezes by layer names)
    fpn = _resnet_fpn_extractor(chanattn.create_model("resnet18", attn="se"), trainable_layers=2)
    out = fpn(x)
    assert list(out) == ["0", "1", "2", "3", "pool"] and fpn.out_channels == 256
    frozen = {n.split(".")[1] for n, p in fpn.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}
    sum(v.sum() for v in out.values()).backward()
    # MobileNetV2's blocks carry the marks torchvision's mobilenet extractor reads
    mobile = chanattn.create_model("mobilenet_v2", width_mult=0.5)
    marks = [i for i, b in enumerate(mobile.features) if getattr(b, "_is_cn", False)]
    assert marks == [2, 4, 7, 14] and mobile.features[-1].out_channels == mobile.num_features
    assert tv.__version__
