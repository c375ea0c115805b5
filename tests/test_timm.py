"""timm integration: registration, pretrained loading, and timm features on materialized models."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import sweet_hub

SIZES = [(2, 32), (3, 48), (5, 96)]


def test_entrypoints_are_registered_on_import():
    names = timm.list_models("sweet_*")
    assert {"sweet_vit", "sweet_vit_tiny", "sweet_vit_small", "sweet_vit_base"} <= set(names)
    assert "sweet_vit.fmnist" in timm.list_pretrained("sweet_vit*")


def test_bundled_template_is_the_default_weights():
    model = timm.create_model("sweet_vit", depth=3, width=96, pretrained=True)
    reference = sweet_hub.SweetTemplate.from_pretrained(sweet_hub.BUNDLED_TEMPLATE).materialize(3, 96)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert model.pretrained_cfg["file"] == str(sweet_hub.BUNDLED_TEMPLATE)


def test_sized_aliases_have_defaults_and_can_be_overridden():
    tiny = timm.create_model("sweet_vit_tiny")
    assert (len(tiny.blocks), tiny.embed_dim) == (12, 192)
    small = timm.create_model("sweet_vit_small", depth=4)
    assert (len(small.blocks), small.embed_dim) == (4, 384)
    default = timm.create_model("sweet_vit")  # the template's largest anchor
    bundled = sweet_hub.SweetTemplate.from_pretrained(sweet_hub.BUNDLED_TEMPLATE).config
    assert (len(default.blocks), default.embed_dim) == bundled.largest_anchor


@pytest.mark.parametrize("depth,width", SIZES)
def test_pretrained_local_dir_equals_materialize(template_dir, tiny_template, fresh_cache, depth, width):
    model = timm.create_model(f"local-dir:{template_dir}", depth=depth, width=width, pretrained=True)
    assert isinstance(model, VisionTransformer)
    expected = tiny_template.materialize(depth, width)
    for (name, a), b in zip(model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name


def test_num_classes_and_in_chans_adaptation(template_dir, fresh_cache):
    model = timm.create_model(f"local-dir:{template_dir}", depth=2, width=32, pretrained=True, num_classes=5, in_chans=3)
    assert model.head.out_features == 5 and model.patch_embed.proj.in_channels == 3
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 5)
    headless = timm.create_model(f"local-dir:{template_dir}", depth=2, width=32, pretrained=True, num_classes=0)
    assert headless(torch.randn(2, 1, 28, 28)).shape == (2, 32)


def test_img_size_change_resamples_pos_embed(template_dir, fresh_cache):
    model = timm.create_model(f"local-dir:{template_dir}", depth=2, width=32, pretrained=True, img_size=56)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 32)
    assert model(torch.randn(1, 1, 56, 56)).shape == (1, 10)


@pytest.mark.parametrize("depth,width", SIZES)
def test_features_only_and_intermediates(template_dir, fresh_cache, depth, width):
    features = timm.create_model(f"local-dir:{template_dir}", depth=depth, width=width, pretrained=True,
                                 features_only=True, out_indices=(0, depth - 1))
    outs = features(torch.randn(2, 1, 28, 28))
    assert [o.shape for o in outs] == [(2, width, 4, 4)] * 2
    assert features.feature_info.channels() == [width, width]

    model = timm.create_model(f"local-dir:{template_dir}", depth=depth, width=width, pretrained=True)
    final, intermediates = model.forward_intermediates(torch.randn(2, 1, 28, 28))
    assert len(intermediates) == depth and intermediates[-1].shape == (2, width, 4, 4)
    assert final.shape == (2, 17, width)


def test_reset_classifier_and_data_config(template_dir, fresh_cache):
    model = timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=True)
    model.reset_classifier(7)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 7)
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (1, 28, 28) and config["mean"] == pytest.approx((0.286,))
    transform = timm.data.create_transform(**config)
    from PIL import Image

    image = Image.new("L", (40, 40), color=128)
    assert transform(image).shape == (1, 28, 28)


def test_non_pretrained_model_uses_the_template_architecture(template_dir):
    model = timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=False)
    assert model.blocks[0].attn.num_heads == 3  # head_dim 16 of the tiny template
    assert model.patch_embed.proj.in_channels == 1


def test_plain_checkpoint_saved_from_sweet_vit_is_not_materialized_again(template_dir, fresh_cache, tmp_path, monkeypatch):
    """The known trap: a repo saved by timm from a materialized sweet_vit names `sweet_vit` too."""
    model = timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=True)
    timm.models.save_for_hf(model, tmp_path / "saved", safe_serialization=True)
    import sweet_hub.timm_models as tm

    def fail(*args, **kwargs):
        raise AssertionError("materialized a plain checkpoint")

    monkeypatch.setattr(tm, "materialized_state_dict", fail)
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_overlay_with_missing_template_is_a_clear_error():
    with pytest.raises(sweet_hub.TemplateNotAvailableError):
        timm.create_model("sweet_vit", depth=2, width=32, pretrained=True, pretrained_cfg_overlay=dict(file="/no/such/template"))
