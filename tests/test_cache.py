"""Materialization cache: the second load reads a plain checkpoint; stale entries are never used."""

from __future__ import annotations

import timm
import torch

import sweet_hub.timm_models as tm
from sweet_hub import SweetTemplate
from sweet_hub.cache import cache_size, clear_cache


def _count_builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = tm.SweetTemplate.from_files.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(tm.SweetTemplate, "from_files", classmethod(counting))
    return calls


def test_second_load_hits_the_cache(template_dir, fresh_cache, monkeypatch):
    builds = _count_builds(monkeypatch)
    first = timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=True)
    second = timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=True)
    assert len(builds) == 1
    assert cache_size()[0] == 1
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_changed_template_invalidates_the_entry(template_dir, fresh_cache, monkeypatch):
    builds = _count_builds(monkeypatch)
    timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=True)
    other = SweetTemplate(head_dim=16, ranks=(8, 16, 16), vector_rank=4, anchors=[(2, 32), (4, 64)])
    other.save_pretrained(template_dir)
    reloaded = timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=True)
    assert len(builds) == 2
    expected = other.materialize(3, 48)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), expected.state_dict().values()))


def test_corrupted_entry_is_rebuilt(template_dir, fresh_cache, monkeypatch):
    timm.create_model(f"local-dir:{template_dir}", depth=2, width=48, pretrained=True)
    entry = next(fresh_cache.glob("*.safetensors"))
    entry.write_bytes(b"broken")
    builds = _count_builds(monkeypatch)
    model = timm.create_model(f"local-dir:{template_dir}", depth=2, width=48, pretrained=True)
    assert len(builds) == 1 and model.embed_dim == 48


def test_cache_can_be_disabled_and_cleared(template_dir, fresh_cache, monkeypatch):
    monkeypatch.setenv("SWEET_HUB_DISABLE_CACHE", "1")
    timm.create_model(f"local-dir:{template_dir}", depth=2, width=32, pretrained=True)
    assert cache_size() == (0, 0)
    monkeypatch.delenv("SWEET_HUB_DISABLE_CACHE")
    timm.create_model(f"local-dir:{template_dir}", depth=2, width=32, pretrained=True)
    count, size = cache_size()
    assert count == 1 and size > 0
    assert clear_cache() == size and cache_size() == (0, 0)


def test_unwritable_cache_warns_and_still_loads(template_dir, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SWEET_HUB_CACHE", str(blocked / "cache"))
    import pytest

    with pytest.warns(UserWarning, match="could not write the materialization cache"):
        model = timm.create_model(f"local-dir:{template_dir}", depth=3, width=48, pretrained=True)
    expected = SweetTemplate.from_pretrained(template_dir).materialize(3, 48)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
