from __future__ import annotations

import pytest
import torch

import chanattn
from chanattn.registry import register

FIRST_FAMILY = ["se", "se_var1", "se_var2", "se_var3", "eca", "rcan_ca", "cbam_channel", "cbam_spatial",
                "cbam", "bam", "ge_theta_minus", "ge_theta", "ge_theta_plus", "sk"]


def test_list_modules_sorted_unique_and_complete():
    names = chanattn.list_modules()
    assert names == sorted(names) and len(names) == len(set(names))
    assert set(FIRST_FAMILY) <= set(names)
    assert "ese" not in names  # aliases resolve but are not listed


def test_list_modules_by_kind():
    assert chanattn.list_modules("spatial") == ["cbam_spatial"]
    assert "sk" in chanattn.list_modules("branch")
    with pytest.raises(ValueError, match="kind must be one of"):
        chanattn.list_modules("nope")


def test_alias_resolves_to_the_same_module():
    assert chanattn.module_info("ese") is chanattn.module_info("se_var3")
    assert type(chanattn.create("ese", 16)) is type(chanattn.create("se_var3", 16))
    assert chanattn.module_info("SE-Var3").name == "se_var3"  # case and dashes are forgiven


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown module 'sqe'.*did you mean.*se") as err:
        chanattn.create("sqe", 16)
    assert "cbam" in str(err.value)  # and the known names
    with pytest.raises(ValueError, match="unknown module 'cbam_chanel'.*cbam_channel"):
        chanattn.module_info("cbam_chanel")
    with pytest.raises(TypeError, match="must be a str"):
        chanattn.create(3, 16)


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="'se' is already registered"):
        @register("se", title="x", paper="x", year=2020, kind="channel")
        class Again(chanattn.AttentionModule):
            pass
    with pytest.raises(ValueError, match="'ese' is already registered"):
        @register("brand_new", title="x", paper="x", year=2020, kind="channel", aliases=("ese",))
        class Aliased(chanattn.AttentionModule):
            pass
    assert "brand_new" not in chanattn.list_modules()
    with pytest.raises(ValueError, match="kind must be one of"):
        register("other", title="x", paper="x", year=2020, kind="weird")


def test_module_info_fields():
    info = chanattn.module_info("se")
    assert info.title == "Squeeze-and-Excitation"
    assert "1709.01507" in info.paper and info.year == 2018
    assert info.kind == "channel"
    assert not hasattr(info, "seed")  # planning notes are not public metadata


def test_create_passes_kwargs_and_rejects_unknown_ones():
    m = chanattn.create("se", 64, rd_ratio=1 / 4)
    assert m.fc1.out_channels == 16
    with pytest.raises(TypeError):
        chanattn.create("se", 64, not_an_option=1)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True])
def test_bad_channel_counts(bad):
    with pytest.raises(ValueError, match=r"SqueezeExcite: channels must be a positive int"):
        chanattn.create("se", bad)


def test_activation_names_and_callables():
    m = chanattn.create("se", 32, act_layer="silu", gate_layer=torch.nn.Hardsigmoid)
    assert isinstance(m.act, torch.nn.SiLU) and isinstance(m.gate, torch.nn.Hardsigmoid)
    m = chanattn.create("se", 32, act_layer=lambda: torch.nn.LeakyReLU(0.2))
    assert isinstance(m.act, torch.nn.LeakyReLU) and m.act.negative_slope == 0.2
    with pytest.raises(ValueError, match="SqueezeExcite: unknown activation 'relux'"):
        chanattn.create("se", 32, act_layer="relux")


def test_no_weight_decay_names_collects_full_names_in_a_model():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), chanattn.create("srm", 16), chanattn.create("gct", 16),
        chanattn.create("se", 16),
    )
    names = chanattn.no_weight_decay_names(model)
    assert names == {"1.cfc", "1.bn.weight", "1.bn.bias", "2.beta"}
    assert names <= dict(model.named_parameters()).keys()
    assert chanattn.no_weight_decay_names(chanattn.create("gct", 8)) == {"beta"}
