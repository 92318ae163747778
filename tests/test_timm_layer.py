"""chanattn's modules dropped into timm's own models: every module in timm's ResNet
(`block_args=dict(attn_layer=...)`, as the class itself and through chanattn.timm_layer), the
channel modules in timm's EfficientNet blocks (`se_layer=`, which passes act_layer and rd_ratio),
built with device= and dtype= (the meta device included), forward and backward."""

from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.errors import InputError
from conftest import ALL_MODULES, channels_for

timm = pytest.importorskip("timm")

CHANNEL_MODULES = chanattn.list_modules("channel")


def _forward_backward(model: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    attn = [p for n, p in model.named_parameters() if ".se." in n]
    assert all(p.grad is not None for p in attn)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_every_module_in_timm_resnet(name):
    layer = chanattn.timm_layer(name)
    model = timm.create_model("resnet18", block_args=dict(attn_layer=layer), num_classes=5)
    assert isinstance(model.layer1[0].se, chanattn.module_info(name).cls)
    _forward_backward(model, 32)
    # the class itself takes what timm's slot passes (device=, dtype=)
    cls = chanattn.module_info(name).cls
    model = timm.create_model("resnet18", block_args=dict(attn_layer=cls), num_classes=5)
    assert isinstance(model.layer4[1].se, cls)


@pytest.mark.parametrize("name", CHANNEL_MODULES)
def test_channel_modules_in_timm_efficientnet(name):
    if name == "fca":  # FcaNet splits C into 16 frequency groups; timm probes se_layer with C = 8
        with pytest.raises(InputError, match="channels must be a multiple of 16, got 8"):
            timm.create_model("tinynet_e", se_layer=chanattn.timm_layer(name))
        return
    model = timm.create_model("tinynet_e", se_layer=chanattn.timm_layer(name), num_classes=5)
    blocks = [m for m in model.modules() if isinstance(m, chanattn.module_info(name).cls)]
    assert len(blocks) >= 10
    _forward_backward(model, 32)


def test_efficientnet_act_layer_and_rd_ratio_reach_the_module():
    model = timm.create_model("tinynet_e", se_layer=chanattn.timm_layer("se"), num_classes=5)
    se = model.blocks[1][0].se
    assert isinstance(se.act, torch.nn.SiLU)  # the block's activation, as timm's own SE takes it
    mid, in_chs = se.channels, model.blocks[1][0].conv_pw.in_channels
    assert se.rd_channels == max(1, int(mid * (0.25 * in_chs / mid) + 1e-6))  # se_ratio of the block input


@pytest.mark.parametrize("name", ALL_MODULES)
def test_device_and_dtype(name):
    c = channels_for(name, 32)
    meta = chanattn.create(name, c, device="meta")
    assert all(t.device.type == "meta" for t in [*meta.parameters(), *meta.buffers()])
    m = chanattn.create(name, c, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in [*m.parameters(), *m.buffers()] if t.is_floating_point())
    y = m.eval()(torch.randn(2, c, 7, 7, dtype=torch.float64))
    assert y.dtype == torch.float64
    # the meta module materialises like any torch layer: to_empty, then the weights
    meta.to_empty(device="cpu")
    ref = chanattn.create(name, c)
    meta.load_state_dict(ref.state_dict())
    x = torch.randn(2, c, 7, 7)
    torch.testing.assert_close(meta.eval()(x), ref.eval()(x), rtol=0, atol=0)


def test_timm_model_on_the_meta_device():
    layer = chanattn.timm_layer("cbam")
    model = timm.create_model("resnet18", block_args=dict(attn_layer=layer), device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize("name", ALL_MODULES)
def test_the_caller_may_change_the_output_in_place(name):
    """timm's blocks add the shortcut to the attention's output in place (x += shortcut): the
    backward must not need the output's values."""
    c = channels_for(name, 16)
    m = chanattn.create(name, c).train()
    x = torch.randn(2, c, 6, 6, requires_grad=True)
    y = m(x)
    y += 1.0
    y.sum().backward()
    assert x.grad is not None


def test_timm_layer_errors():
    with pytest.raises(InputError, match=r"EfficientChannelAttention takes no option\(s\) rd_channels"):
        chanattn.timm_layer("eca", rd_channels=4)
    with pytest.raises(ValueError, match="unknown module"):
        chanattn.timm_layer("nope")
