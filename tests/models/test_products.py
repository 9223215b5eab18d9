"""Product conditioning of the U-Net: a learned embedding per target product."""

from __future__ import annotations

import pytest
import torch

from precipdiff.errors import ConfigError
from precipdiff.models.unet import UNet, UNetConfig

CFG = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(1,), head_channels=8)
WITH = UNetConfig(**{**CFG.__dict__, "products": ("mrms", "fmi")})


def _pair() -> tuple[UNet, UNet]:
    torch.manual_seed(0)
    plain = UNet(CFG)
    with torch.no_grad():  # the output layer starts at zero (EDM): give it weights
        for p in plain.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    labelled = UNet(WITH)
    missing = labelled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["product_embed.weight"]
    return plain, labelled


def _inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 1, 16, 16, generator=g), torch.full((batch,), 0.3),
            torch.randn(batch, 1, 16, 16, generator=g))


def test_a_zero_embedding_is_the_net_without_products() -> None:
    plain, labelled = _pair()
    x, c, cond = _inputs()
    with torch.no_grad():
        ref = plain(x, c, cond)
        for label in (None, torch.tensor([0, 1, 2])):
            torch.testing.assert_close(labelled(x, c, cond, product=label), ref)


def test_labels_condition_each_sample_and_set_product_is_the_default() -> None:
    _, net = _pair()
    with torch.no_grad():
        net.product_embed.weight.normal_(0, 0.5)
        x, c, cond = _inputs()
        mixed = net(x, c, cond, product=torch.tensor([0, 1, 2]))
        for i, name in enumerate((None, "mrms", "fmi")):
            one = net.set_product(name)(x[i:i + 1], c[i:i + 1], cond[i:i + 1])
            torch.testing.assert_close(mixed[i:i + 1], one, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(mixed[1], net.set_product(None)(x, c, cond)[1])
    assert net.product_label("fmi") == 2 and net.product_label("any") == 0


def test_unknown_products_and_bad_names_are_refused() -> None:
    _, net = _pair()
    with pytest.raises(ValueError, match="'opera'.*mrms"):
        net.set_product("opera")
    with pytest.raises(ValueError, match="no product embedding"):
        UNet(CFG).set_product("mrms")
    with pytest.raises(ValueError, match="without products"):
        UNet(CFG)(*_inputs(1), product=torch.tensor([1]))
    for bad in (("a", "a"), ("any",)):
        with pytest.raises(ConfigError, match="model.products"):
            UNetConfig(products=bad)
    with pytest.raises(ConfigError, match="regression"):
        UNetConfig(regression=True, products=("a",))
