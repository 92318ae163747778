"""attach: torchvision and timm models get the module where create_model puts it, keep their weights
and state-dict keys, and refuse what they should."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import chanattn
from chanattn import AttentionModule
from chanattn.models import count_params, find_blocks
from chanattn.models.placement import AttnAfter
from conftest import randomise_norms

tvm = pytest.importorskip("torchvision.models")


def _attention_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, AttentionModule)]


def _shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in model.parameters()]



def test_se_on_torchvision_resnet50_is_se_resnet50():
    model = tvm.resnet50()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, report = chanattn.attach(model, "se", return_report=True)
    assert count_params(model) == 28_088_024 and round(count_params(model) / 1e6, 2) == 28.09
    reference = chanattn.create_model("resnet50", attn="se")
    assert _shapes(model) == _shapes(reference)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    # every existing tensor kept its key and its value; only the SE modules are new
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert all(".attn." in k for k in set(after) - set(before))
    # one module per block, with the block's channels, listed in the report
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, tvm.resnet.Bottleneck)]
    assert len(blocks) == 16 == len(report)
    for (name, block), entry in zip(blocks, report):
        assert len(_attention_modules(block)) == 1
        assert block.attn.channels == block.bn3.num_features == entry.channels
        assert (entry.path, entry.target, entry.where) == (f"{name}.attn", name, "block")
    assert str(report[0]) == "layer1.0.attn: SqueezeExcite(256) block layer1.0"


def test_attached_model_runs_like_create_model_and_state_dicts_interchange():
    model = chanattn.attach(tvm.resnet18(), "eca")
    ours = chanattn.create_model("resnet18", attn="eca")
    ours.load_state_dict(model.state_dict())  # strict: the same keys
    x = torch.randn(2, 3, 32, 32)
    randomise_norms(model, affine=False)
    ours.load_state_dict(model.state_dict())
    model.eval()
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x))


def test_forward_backward_every_parameter_gets_a_gradient():
    model = chanattn.attach(tvm.resnet18(), "cbam")
    y = model.train()(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("build", [tvm.resnet18, tvm.mobilenet_v2], ids=["resnet18", "mobilenet_v2"])
def test_identity_module_leaves_the_output_unchanged(build):
    # GCT is the identity at initialisation: the rewritten forward must compute what the original did
    torch.manual_seed(0)
    model = build()
    randomise_norms(model, affine=False)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        chanattn.attach(model, "gct", placement="block")  # one per block: the rewritten block forwards
        got = model(x)
    assert len(_attention_modules(model)) == len(find_blocks(model)) > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_state_dict_round_trip_and_pickle():
    model = chanattn.attach(tvm.resnet18(), "se")
    for p in model.parameters():
        p.data.normal_()
    fresh = chanattn.attach(tvm.resnet18(), "se")
    fresh.load_state_dict(model.state_dict())  # strict
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    clone = copy.deepcopy(model)
    assert clone.layer1[0].attn is not model.layer1[0].attn
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


def test_a_checkpoint_without_attention_loads():
    checkpoint = tvm.resnet18().state_dict()
    model = chanattn.attach(tvm.resnet18(), "se")
    result = model.load_state_dict(checkpoint, strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".attn." in k for k in result.missing_keys)
    assert torch.equal(model.layer1[0].conv1.weight, checkpoint["layer1.0.conv1.weight"])


def test_attach_twice_is_an_error():
    model = chanattn.attach(tvm.resnet18(), "se")
    n = count_params(model)
    with pytest.raises(ValueError, match="already has chanattn attention"):
        chanattn.attach(model, "se")
    with pytest.raises(ValueError, match="already has chanattn attention"):
        chanattn.attach(model, "eca")
    assert count_params(model) == n  # nothing was added
    with pytest.raises(ValueError, match="already has chanattn attention"):
        chanattn.attach(chanattn.create_model("resnet20", attn="se"), "se")


def test_unknown_model_names_the_block_types_it_found():
    class MyBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            return x + self.bn(self.conv(x))

    model = nn.Sequential(nn.Conv2d(3, 8, 3), MyBlock(), MyBlock())
    with pytest.raises(ValueError, match=r"no residual block that attach knows.*MyBlock.*targets="):
        chanattn.attach(model, "se")
    # with explicit targets it works: after a BN (wrapped), after a block
    model, report = chanattn.attach(model, "eca", targets=["1.bn", "2"], return_report=True)
    assert [(r.path, r.channels, r.where) for r in report] == [("1.bn.attn", 8, "after"),
                                                               ("2.attn", 8, "after")]
    assert isinstance(model[1].bn, AttnAfter) and isinstance(model[2], AttnAfter)
    assert model(torch.randn(2, 3, 9, 9)).shape == (2, 8, 7, 7)


def test_targets_by_name_and_by_predicate():
    model, report = chanattn.attach(tvm.resnet50(), "se", targets=lambda name, m: name.startswith("layer4.")
                                    and isinstance(m, tvm.resnet.Bottleneck), return_report=True)
    assert [r.target for r in report] == ["layer4.0", "layer4.1", "layer4.2"]
    assert [r.where for r in report] == ["block"] * 3 and len(_attention_modules(model)) == 3
    model, report = chanattn.attach(tvm.resnet18(), "eca", targets=["layer2", "layer3.1"], return_report=True)
    assert [(r.path, r.where) for r in report] == [("layer2.2", "after"), ("layer3.1.attn", "block")]
    with pytest.raises(ValueError, match=r"no module named 'layer5'.*did you mean"):
        chanattn.attach(tvm.resnet18(), "se", targets=["layer5"])
    with pytest.raises(ValueError, match="chose no module"):
        chanattn.attach(tvm.resnet18(), "se", targets=lambda n, m: False)


def test_wrapped_target_still_loads_its_old_keys():
    checkpoint = {k: torch.randn_like(v) if v.is_floating_point() else v
                  for k, v in tvm.resnet18().state_dict().items()}
    model = chanattn.attach(tvm.resnet18(), "se", targets=["layer1.0.bn2"])
    result = model.load_state_dict(checkpoint, strict=False)
    assert result.unexpected_keys == [] and all(".attn." in k for k in result.missing_keys)
    assert torch.equal(model.layer1[0].bn2.module.weight, checkpoint["layer1.0.bn2.weight"])


def test_sk_is_refused():
    with pytest.raises(ValueError, match="create_model"):
        chanattn.attach(tvm.resnet18(), "sk")


@pytest.mark.parametrize("name", ["se", "bam", "dia", "gsop"])
@pytest.mark.parametrize(("arch", "options"), [("resnet20", {}), ("plain_cnn", {}),
                                               ("wide_resnet", {"depth": 10, "widen_factor": 1})])
def test_attach_to_chanattn_models_same_structure_as_create_model(arch, options, name):
    attached = chanattn.attach(chanattn.create_model(arch, **options), name)
    built = chanattn.create_model(arch, attn=name, **options)
    assert [(n, p.shape) for n, p in attached.named_parameters()] == \
        [(n, p.shape) for n, p in built.named_parameters()]


@pytest.mark.parametrize("name", ["se", "bam", "dia", "gsop", "cbam"])
def test_same_structure_as_create_model(name):
    tv = chanattn.attach(tvm.resnet18(), name)
    ours = chanattn.attach(chanattn.create_model("resnet18"), name)
    built = chanattn.create_model("resnet18", attn=name)
    assert _shapes(tv) == _shapes(ours) == _shapes(built)
    assert [n for n, _ in tv.named_parameters()] == [n for n, _ in built.named_parameters()]


@pytest.mark.parametrize("name", ["se", "bam", "dia"])
def test_mobilenet_v2_same_structure_as_create_model(name):
    model, report = chanattn.attach(tvm.mobilenet_v2(), name, return_report=True)
    built = chanattn.create_model("mobilenet_v2", attn=name)
    assert _shapes(model) == _shapes(built)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in built.named_parameters()]
    if name == "se":
        blocks = [m for m in model.modules() if isinstance(m, tvm.mobilenetv2.InvertedResidual)]
        channels = [b.conv[-1].num_features for b in blocks]
        assert len(report) == 17 and [r.channels for r in report] == channels
    y = model.train()(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dia_shares_a_cell_per_stage_and_gsop_goes_last():
    model = chanattn.attach(tvm.resnet34(), "dia")
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        assert len({id(b.attn.cell) for b in stage}) == 1
        assert [b.attn.index for b in stage] == list(range(len(stage)))
    model = chanattn.attach(tvm.resnet34(), "gsop")
    assert [[getattr(b, "attn", None) is not None for b in s] for s in (model.layer1, model.layer2)] == \
        [[False, False, True], [False, False, False, True]]


def test_bam_after_stages_1_to_3_of_a_resnet():
    model, report = chanattn.attach(tvm.resnet50(), "bam", return_report=True)
    assert [(r.path, r.channels) for r in report] == [("layer1.3", 256), ("layer2.4", 512),
                                                      ("layer3.6", 1024)]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_timm_resnet_uses_its_se_slot():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False)
    randomise_norms(model, affine=False)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    chanattn.attach(model, "gct", placement="block")  # in timm's se slot of every block
    assert len(_attention_modules(model)) == len(find_blocks(model)) > 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    model = chanattn.attach(timm.create_model("resnet18", pretrained=False), "se")
    assert count_params(model) == count_params(chanattn.attach(tvm.resnet18(), "se"))
    assert [b.se.channels for b in model.layer3] == [256, 256]
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="'se' slot"):
        chanattn.attach(timm.create_model("seresnet18", pretrained=False), "eca")


def test_new_modules_follow_the_model_dtype_and_mode():
    model = tvm.resnet18().double().eval()
    chanattn.attach(model, "se")
    attn = model.layer2[1].attn
    assert not attn.training
    assert all(p.dtype == torch.float64 for p in attn.parameters())
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_compile_attached_model():
    model = chanattn.attach(tvm.resnet18(), "dia")
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_nested_targets_are_all_placed():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), nn.ReLU())
    model, report = chanattn.attach(model, "se", targets=lambda n, m: n in ("0", "0.1"), return_report=True)
    assert [r.path for r in report] == ["0.2", "0.1.attn"]
    assert isinstance(model[0][1], AttnAfter) and len(_attention_modules(model)) == 2
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 8, 4, 4)
