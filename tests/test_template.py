"""The method: shapes, exactness at anchors, derived sizes, contraction orders, dtype, gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, make_template
from timm.models.vision_transformer import VisionTransformer

import sweet_hub
from sweet_hub import SweetTemplate, derive_scalers, materialize_state_dict
from sweet_hub.config import TemplateConfig, vit_args
from sweet_hub.errors import TemplateConfigError
from sweet_hub.tucker import _tucker_blocks, init_cores, init_scalers, materialize_flops, resample_rows


@pytest.mark.parametrize("depth,width", [(2, 32), (4, 64), (1, 16), (3, 48), (7, 112), (9, 160)])
def test_materialized_state_dict_matches_timm_vit(tiny_template, depth, width):
    """Every tensor of a timm VisionTransformer of that size, with the right shape, nothing else."""
    state = tiny_template.state_dict_for(depth, width)
    reference = VisionTransformer(**vit_args(tiny_template.config, depth, width)).state_dict()
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        assert state[name].shape == tensor.shape, name


def test_anchor_sizes_use_exactly_the_stored_scalers(tiny_template):
    cfg = tiny_template.config
    for depth, width in cfg.anchors:
        stored = dict(tiny_template.scalers[f"d{depth}_w{width}"].items())
        expected = materialize_state_dict(dict(tiny_template.cores.items()), stored, cfg)
        model = tiny_template.materialize(depth, width)
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name]), name
        assert tiny_template.scaler_source(depth, width) == "anchor"


def test_block_formula(tiny_template):
    """Block (l, b) is U @ (sum_a X[l, b, a] G[a]) @ V.T / sqrt(D r1 r2 r3), checked on q, fc1 and fc2 blocks."""
    depth, width = 4, 64
    s = dict(tiny_template.scalers["d4_w64"].items())
    G = tiny_template.cores["G"]
    state = tiny_template.state_dict_for(depth, width)

    r1, r2, r3 = G.shape

    def block(layer, b):
        mixed = torch.einsum("a,ars->rs", s["X"][layer, b], G)
        return s["U"] @ mixed @ s["V"].T / (width * r1 * r2 * r3) ** 0.5

    torch.testing.assert_close(state["blocks.1.attn.qkv.weight"][:width], block(1, 0))
    torch.testing.assert_close(state["blocks.2.attn.qkv.weight"][2 * width:], block(2, 2))
    torch.testing.assert_close(state["blocks.3.attn.proj.weight"], block(3, 3))
    torch.testing.assert_close(state["blocks.0.mlp.fc1.weight"][width:2 * width], block(0, 5))
    torch.testing.assert_close(state["blocks.0.mlp.fc2.weight"][:, 3 * width:], block(0, 11))


@pytest.mark.parametrize("ranks,depth,width", [((8, 16, 32), 3, 48), ((64, 16, 8), 1, 16), ((4, 32, 32), 12, 256)])
def test_contraction_orders_agree(ranks, depth, width):
    """The cheapest order is picked by cost; all orders give the same blocks."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(depth, 12, ranks[0], generator=g, dtype=torch.float64)
    G = torch.randn(*ranks, generator=g, dtype=torch.float64)
    U = torch.randn(width, ranks[1], generator=g, dtype=torch.float64)
    V = torch.randn(width, ranks[2], generator=g, dtype=torch.float64)
    reference = torch.einsum("lba,ars,dr,es->lbde", X, G, U, V)
    torch.testing.assert_close(_tucker_blocks(X, G, U, V), reference)


def test_derived_sizes_deeper_and_wider_than_every_anchor(tiny_template):
    model = tiny_template.materialize(depth=9, width=160)
    assert isinstance(model, VisionTransformer)
    assert len(model.blocks) == 9 and model.embed_dim == 160 and model.blocks[0].attn.num_heads == 10
    assert tiny_template.scaler_source(9, 160) == "derived from 4x64"
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_derive_is_identity_at_the_source_size(tiny_template):
    source = dict(tiny_template.scalers["d4_w64"].items())
    derived = derive_scalers(source, 4, 64)
    for name in source:
        assert torch.equal(derived[name], source[name])


def test_derive_rescaling():
    """Deeper: residual-writing blocks shrink by L_src/L. Wider: V shrinks by sqrt(D_src/D)."""
    cfg = TemplateConfig(**{**TINY, "anchors": [(2, 32)]})
    s = init_scalers(cfg, 2, 32, torch.Generator().manual_seed(0))
    plain = derive_scalers(s, 4, 64, depth_rescale=False, width_rescale=False)
    scaled = derive_scalers(s, 4, 64, depth_rescale=True, width_rescale=True)
    torch.testing.assert_close(scaled["X"][:, 0], plain["X"][:, 0])          # q block untouched
    torch.testing.assert_close(scaled["X"][:, 3], plain["X"][:, 3] * 0.5)    # attn.proj
    torch.testing.assert_close(scaled["X"][:, 8:], plain["X"][:, 8:] * 0.5)  # fc2 blocks
    torch.testing.assert_close(scaled["V"], plain["V"] * (32 / 64) ** 0.5)
    torch.testing.assert_close(scaled["U"], plain["U"])


def test_resample_rows_keeps_ends_and_interpolates():
    t = torch.arange(5.0).unsqueeze(1).repeat(1, 3)
    out = resample_rows(t, 9)
    torch.testing.assert_close(out[:, 0], torch.arange(9.0) / 2)
    assert torch.equal(resample_rows(t, 5), t)


def test_init_gives_unit_scale_features_at_every_width():
    """Random templates behave like timm's random init: pre-logit features at unit scale
    (class-token pooling: a mean over tokens shrinks with their correlation, not with the init)."""
    x = torch.randn(8, 1, 28, 28)
    template = make_template(global_pool="token")
    for depth, width in [(2, 32), (4, 64), (6, 256), (2, 512)]:
        model = template.materialize(depth, width)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert 0.5 < feats.std().item() < 2.0
    big = make_template(anchors=[(2, 32), (4, 512)])  # anchor: stored random scalers, var 1/(2D) by design
    state = big.state_dict_for(4, 512)
    assert abs(state["blocks.0.attn.qkv.weight"].var().item() * 2 * 512 - 1) < 0.5


def test_dtype_is_respected(tiny_template):
    state = tiny_template.state_dict_for(2, 48, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    model = tiny_template.materialize(2, 48, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    fp64 = {k: v.double() for k, v in tiny_template.cores.items()}
    scalers = {k: v.double() for k, v in tiny_template.scalers["d2_w32"].items()}
    assert materialize_state_dict(fp64, scalers, tiny_template.config)["pos_embed"].dtype == torch.float64


def test_gradients_reach_template_and_scalers(tiny_template):
    state = tiny_template(4, 64)
    loss = sum(v.float().pow(2).sum() for k, v in state.items() if "head" not in k)
    loss.backward()
    assert tiny_template.cores["G"].grad.abs().sum() > 0
    assert tiny_template.scalers["d4_w64"]["U"].grad.abs().sum() > 0
    assert tiny_template.scalers["d2_w32"]["U"].grad is None


def test_materialize_kwargs_go_to_timm(tiny_template):
    model = tiny_template.materialize(2, 32, num_classes=3, drop_path_rate=0.1)
    assert model.head.out_features == 3
    model = tiny_template.materialize(2, 32, in_chans=3)
    assert model.patch_embed.proj.in_channels == 3
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 10)


def test_flop_count_matches_the_cheapest_order():
    cfg = TemplateConfig(**{**TINY, "anchors": [(2, 32)]})
    assert materialize_flops(cfg, 12, 768) > materialize_flops(cfg, 12, 384) > materialize_flops(cfg, 6, 384)


def test_add_scalers_replaces_derived(tiny_template):
    derived = {k: v.detach() for k, v in tiny_template.scalers_for(3, 48).items()}
    tiny_template.add_scalers(3, 48, {k: v * 1.5 for k, v in derived.items()}, source="learned", steps=10)
    assert tiny_template.scaler_source(3, 48) == "learned"
    torch.testing.assert_close(tiny_template.scalers_for(3, 48)["U"], derived["U"] * 1.5)


def test_remove_scalers_derives_the_size_again_and_keeps_anchors(tiny_template):
    derived = {k: v.detach().clone() for k, v in tiny_template.scalers_for(3, 48).items()}
    tiny_template.add_scalers(3, 48, {k: v * 1.5 for k, v in derived.items()}, source="learned")
    tiny_template.remove_scalers(3, 48)
    assert tiny_template.scaler_source(3, 48).startswith("derived")
    torch.testing.assert_close(tiny_template.scalers_for(3, 48)["U"], derived["U"])
    anchor = tuple(tiny_template.config.anchors[0])
    with pytest.raises(TemplateConfigError, match="is an anchor"):
        tiny_template.remove_scalers(*anchor)
    with pytest.raises(TemplateConfigError, match="No scalers are stored for 3x48"):
        tiny_template.remove_scalers(3, 48)


def test_cores_are_size_agnostic():
    """The template's tensors do not depend on any model size: only on ranks and input config."""
    a = init_cores(TemplateConfig(**{**TINY, "anchors": [(2, 32)]}))
    b = init_cores(TemplateConfig(**{**TINY, "anchors": [(12, 768), (3, 16)]}))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_template_round_trip(template_dir, tiny_template):
    loaded = SweetTemplate.from_pretrained(template_dir)
    assert loaded.config == tiny_template.config
    for name in tiny_template.cores:
        assert torch.equal(loaded.cores[name], tiny_template.cores[name])
    for name in tiny_template.scalers:
        for k in tiny_template.scalers[name]:
            assert torch.equal(loaded.scalers[name][k], tiny_template.scalers[name][k])
    assert sorted(p.name for p in template_dir.iterdir()) == ["README.md", "config.json", "scalers", "template.safetensors"]
    card = (template_dir / "README.md").read_text()
    assert "library_name: sweet-hub" in card and "4x64" in card


def test_different_seeds_differ():
    assert not torch.equal(make_template(0).cores["G"], make_template(1).cores["G"])


def test_model_card_kwargs_reach_the_card_and_stale_scalers_are_removed(tmp_path):
    template = make_template()
    template.add_scalers(3, 48, template.scalers_for(3, 48), source="learned")
    template.save_pretrained(tmp_path / "t", model_card_kwargs={"repo_id": "me/x"})
    card = (tmp_path / "t" / "README.md").read_text()
    assert 'hf-hub:me/x"' in card and "<org>/<template-repo>" not in card
    assert (tmp_path / "t" / "scalers" / "d3_w48.safetensors").is_file()
    make_template().save_pretrained(tmp_path / "t")  # the same anchors, no learned 3x48
    assert not (tmp_path / "t" / "scalers" / "d3_w48.safetensors").exists()
    assert SweetTemplate.from_pretrained(tmp_path / "t").sizes == [(2, 32), (4, 64)]


def test_template_takes_a_config_or_fields():
    cfg = TemplateConfig(**TINY)
    assert SweetTemplate(cfg).config == cfg == SweetTemplate(**TINY).config
    assert SweetTemplate(cfg, num_classes=3).config.num_classes == 3
    with pytest.raises(sweet_hub.TemplateConfigError, match="Unknown template config field"):
        SweetTemplate(rank=(1, 2, 3))
    assert sweet_hub.parse_size(sweet_hub.format_size(8, 192)) == (8, 192) == sweet_hub.parse_size("d8_w192")
    with pytest.raises(sweet_hub.SizeError, match="8x192"):
        sweet_hub.parse_size("8 by 192")


def _save_learned_sizes(folder: str, sizes: list[tuple[int, int]], factor: float) -> None:
    """One learn_scalers-like process: load the folder, learn (here: scale) some sizes, save each."""
    torch.set_num_threads(1)
    template = SweetTemplate.from_pretrained(folder)
    for depth, width in sizes:
        template.add_scalers(depth, width, {k: v * factor for k, v in template.scalers_for(depth, width).items()}, source="learned")
        template.save_scalers(folder, depth, width)


def test_processes_saving_scalers_into_one_folder_keep_each_others_sizes(template_dir):
    """save_scalers changes only its own size's entry (under a lock): runs that learn different sizes into
    the same folder at the same time do not drop each other's entries from config.json."""
    import multiprocessing

    first, second = [(3, 48), (1, 16), (5, 80)], [(2, 48), (3, 16), (5, 32)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_learned_sizes, args=(str(template_dir), sizes, factor))
               for sizes, factor in ((first, 1.5), (second, 0.5))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    loaded = SweetTemplate.from_pretrained(template_dir)  # config.json's file hashes match every file
    assert set(loaded.sizes) == {(2, 32), (4, 64), *first, *second}
    derived = make_template()
    for sizes, factor in ((first, 1.5), (second, 0.5)):
        for depth, width in sizes:
            assert loaded.scaler_source(depth, width) == "learned"
            torch.testing.assert_close(loaded.scalers_for(depth, width)["U"], derived.scalers_for(depth, width)["U"] * factor)
    card = (template_dir / "README.md").read_text()
    assert all(f"| {d}x{w} | `scalers/d{d}_w{w}.safetensors` | learned |" in card for d, w in first + second)


def test_save_pretrained_waits_for_the_folder_lock(tmp_path):
    """A full save takes the same inter-process lock as save_scalers, so it never interleaves with a
    learn_scalers run writing into that folder (fcntl locks conflict across open files, as across processes)."""
    import threading

    from sweet_hub.files import folder_lock

    folder = tmp_path / "t"
    saver = threading.Thread(target=make_template().save_pretrained, args=(folder,))
    with folder_lock(folder):
        saver.start()
        saver.join(timeout=1.0)
        assert saver.is_alive() and not (folder / "config.json").exists()
    saver.join(timeout=60)
    assert not saver.is_alive()
    assert SweetTemplate.from_pretrained(folder).sizes == [(2, 32), (4, 64)]
