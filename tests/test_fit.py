"""SweetTemplate.fit and `sweet-hub fit`: a template from a ViT checkpoint sweet-hub never produced."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from sweet_hub import FitError, SweetTemplate
from sweet_hub.cli import main as cli
from sweet_hub.decompose import read_source, reconstruction_errors

SMALL = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10)


def plain_vit(depth: int = 4, width: int = 96, heads: int = 3, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A stock timm ViT with timm's own init, perturbed so no tensor is at a trivial value."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", **{**SMALL, "depth": depth, "embed_dim": width, "num_heads": heads, **kwargs})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def test_full_rank_fit_reconstructs_a_model_materialized_from_a_random_template():
    source = SweetTemplate(ranks=(8, 16, 16), head_dim=16, anchors=[(3, 64)]).materialize(3, 64)
    fitted = SweetTemplate.fit(source, progress=False)
    report = fitted.card_info["fit"]
    assert report["ranks"] == [36, 64, 64] and report["refine_steps"] == 0
    assert max(report["errors"].values()) < 1e-4
    rebuilt = fitted.materialize(3, 64).state_dict()
    assert max(reconstruction_errors(rebuilt, read_source(source).state).values()) < 1e-4
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(fitted.materialize(3, 64)(x), source(x), rtol=1e-4, atol=1e-5)


def test_fit_of_a_plain_timm_vit_is_exact_and_selection_derives_other_sizes():
    source = plain_vit()
    fitted = SweetTemplate.fit(source, progress=False)
    assert fitted.config.derivation == "select" and fitted.sizes == [(4, 96)]
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(fitted.materialize(4, 96)(x), source(x), rtol=1e-4, atol=1e-5)
    # twice as wide: every channel duplicated, reads divided between the copies -> the same function
    torch.testing.assert_close(fitted.materialize(4, 192)(x), source(x), rtol=1e-4, atol=1e-5)
    wide = fitted.materialize(4, 192).state_dict()
    assert not torch.allclose(wide["blocks.0.attn.proj.weight"][:, :96], wide["blocks.0.attn.proj.weight"][:, 96:])  # copies differ
    # narrower and shallower: exactly the source's weights at evenly spaced layers, first channels
    small, state = fitted.materialize(2, 64).state_dict(), source.state_dict()
    for new, old in enumerate([0, 3]):
        torch.testing.assert_close(small[f"blocks.{new}.attn.proj.weight"], state[f"blocks.{old}.attn.proj.weight"][:64, :64])
        q = state[f"blocks.{old}.attn.qkv.weight"].reshape(3, 96, 96)[:, :64, :64].reshape(192, 64)
        torch.testing.assert_close(small[f"blocks.{new}.attn.qkv.weight"], q)
    torch.testing.assert_close(small["pos_embed"], state["pos_embed"][..., :64])


def test_reduced_rank_fit_refines_and_distils(tmp_path):
    source = plain_vit(depth=3, width=64, heads=2)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    fitted = SweetTemplate.fit(source, ranks=(12, 32, 32), anchors=[(2, 32)], images=images, steps=30, distill_steps=6,
                               progress=False)
    report = fitted.card_info["fit"]
    assert report["refine_steps"] == 30
    assert sum(report["errors"].values()) <= sum(report["hosvd_errors"].values())
    assert report["source_distill"]["distill_loss_after"] < report["source_distill"]["distill_loss_before"]
    assert fitted.scaler_source(3, 64) == "fitted" and fitted.scaler_source(2, 32) == "learned"
    fitted.save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["sweet_format_version"] == 2 and config["derivation"] == "select"
    assert config["card_info"]["fit"]["ranks"] == [12, 32, 32]
    assert "relative reconstruction error" in (tmp_path / "t" / "README.md").read_text()
    again = SweetTemplate.from_pretrained(tmp_path / "t")
    torch.testing.assert_close(again.state_dict_for(5, 96), fitted.state_dict_for(5, 96))


def test_pretrained_templates_stay_format_version_1(tmp_path):
    SweetTemplate(ranks=(4, 8, 8), head_dim=16, anchors=[(2, 32)]).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["sweet_format_version"] == 1


def test_cli_fit_round_trip_through_timm_at_a_size_the_source_is_not(tmp_path, capsys):
    source = plain_vit()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "vit.safetensors")
    out = tmp_path / "fitted"
    args = ["fit", str(tmp_path / "vit.safetensors"), "--model", "vit_tiny_patch16_224", "--model-args", "img_size=28", "patch_size=7",
            "in_chans=1", "num_classes=10", "depth=4", "embed_dim=96", "num_heads=3", "--out", str(out), "--anchors", "2x64",
            "--no-knn", "--json", str(tmp_path / "report.json")]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "relative reconstruction error" in printed and "template.safetensors" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["source_size"] == "4x96" and set(report["file_bytes"]) == {"template.safetensors", "scalers/d4_w96.safetensors",
                                                                             "scalers/d2_w64.safetensors"}
    x = torch.randn(2, 1, 28, 28)
    same = timm.create_model("sweet_vit", depth=4, width=96, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    torch.testing.assert_close(same.eval()(x), source(x), rtol=1e-4, atol=1e-5)
    other = timm.create_model("sweet_vit", depth=6, width=128, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    assert other(x).shape == (2, 10) and len(other.blocks) == 6 and other.embed_dim == 128
    # a timm folder (local-dir:) and a bare state dict with --num-heads work as sources too
    timm_dir = tmp_path / "timm_dir"
    from sweet_hub import export_timm

    export_timm(source, timm_dir)
    assert cli(["fit", str(timm_dir), "--out", str(tmp_path / "f2"), "--no-knn"]) == 0
    assert cli(["fit", str(tmp_path / "vit.safetensors"), "--num-heads", "3", "--out", str(tmp_path / "f3"), "--no-knn"]) == 0
    assert cli(["fit", str(tmp_path / "vit.safetensors"), "--out", str(tmp_path / "f4")]) == 2
    assert "--num-heads" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    (dict(mlp_ratio=2.0), "MLP ratio"),
    (dict(qkv_bias=False), "qkv_bias=True"),
    (dict(init_values=1e-5), "layer scale"),
    (dict(qk_norm=True), "QK norm"),
    (dict(reg_tokens=2), "prefix tokens"),
    (dict(class_token=False, global_pool="avg"), "class token"),
    (dict(global_pool="avg", fc_norm=True), "fc_norm"),
])
def test_fit_refuses_what_the_tucker_form_cannot_hold(kwargs, message):
    with pytest.raises(FitError, match=message):
        SweetTemplate.fit(plain_vit(depth=2, width=64, heads=2, **kwargs), progress=False)


def test_fit_refuses_other_inputs_with_the_difference():
    with pytest.raises(FitError, match="patch size differs"):
        SweetTemplate.fit(plain_vit(depth=2, width=64, heads=2), patch_size=4, progress=False)
    with pytest.raises(FitError, match="not a timm VisionTransformer"):
        SweetTemplate.fit(timm.create_model("resnet18", num_classes=10), progress=False)
    with pytest.raises(FitError, match="num_heads"):
        SweetTemplate.fit(plain_vit(depth=2, width=64, heads=2).state_dict(), progress=False)
    with pytest.raises(FitError, match="exceed"):
        SweetTemplate.fit(plain_vit(depth=2, width=64, heads=2), ranks=(8, 128, 64), progress=False)
    with pytest.raises(FitError, match="not a timm VisionTransformer checkpoint"):
        SweetTemplate.fit({"weight": torch.zeros(3, 3)}, num_heads=1, progress=False)
