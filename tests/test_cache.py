"""Materialization cache: the second load reads a plain checkpoint; stale entries are never used."""

from __future__ import annotations

import timm
import torch

import sweet_hub.timm_models as tm
from sweet_hub import SweetTemplate
from sweet_hub.cache import cache_size, clear_cache, wait_for_writes


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
    wait_for_writes()
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


def test_cache_is_capped_least_recently_used_first(template_dir, fresh_cache, monkeypatch, capsys):
    from sweet_hub.cache import cache_entries
    from sweet_hub.cli import main

    sizes = [(2, 32), (2, 48), (2, 64)]
    for depth, width in sizes:
        timm.create_model(f"local-dir:{template_dir}", depth=depth, width=width, pretrained=True)
    entries = {e.size: e for e in cache_entries()}
    assert set(entries) == {"2x32", "2x48", "2x64"}
    timm.create_model(f"local-dir:{template_dir}", depth=2, width=32, pretrained=True)  # 2x32 is used again
    limit = entries["2x64"].bytes + entries["2x32"].bytes + 1
    monkeypatch.setenv("SWEET_HUB_CACHE_LIMIT", str(limit))
    timm.create_model(f"local-dir:{template_dir}", depth=3, width=32, pretrained=True)  # a new entry: evict to fit
    # least recently used first: 2x48 (oldest), then 2x64; 2x32 was used again and fits beside the new 3x32
    assert {e.size for e in cache_entries()} == {"2x32", "3x32"}
    assert sum(e.bytes for e in cache_entries()) <= limit
    assert main(["cache"]) == 0
    assert "3x32" in capsys.readouterr().out
    assert main(["cache", "--max-size", "0"]) == 0 and cache_size() == (0, 0)


_LOADER = """
import os, sys, time, torch, timm
os.environ["SWEET_HUB_CACHE"] = {cache!r}
import sweet_hub
while time.time() < {start}:
    time.sleep(0.001)
m = timm.create_model("local-dir:{template}", depth=3, width=48, pretrained=True)
torch.save({{k: v.clone() for k, v in m.state_dict().items()}}, {out!r})
"""


def test_four_processes_on_a_cold_cache_agree_on_one_entry(template_dir, tmp_path):
    import subprocess
    import sys
    import time

    cache = tmp_path / "cold"
    start = time.time() + 6  # all four start loading at the same moment, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", _LOADER.format(cache=str(cache), start=start, template=template_dir,
                                                                     out=str(tmp_path / f"{i}.pt"))]) for i in range(4)]
    assert all(p.wait(timeout=180) == 0 for p in procs)
    states = [torch.load(tmp_path / f"{i}.pt") for i in range(4)]
    expected = SweetTemplate.from_pretrained(template_dir).materialize(3, 48).state_dict()
    assert all(torch.equal(s[k], expected[k]) for s in states for k in expected)
    assert len(list(cache.glob("*.safetensors"))) == 1 and not list(cache.glob("*.tmp"))


def test_clear_during_loads_never_fails_a_load(template_dir, fresh_cache):
    import threading

    from sweet_hub.cache import clear_cache

    errors: list[BaseException] = []
    stop = threading.Event()

    def clearer():
        while not stop.is_set():
            clear_cache()

    thread = threading.Thread(target=clearer)
    thread.start()
    try:
        for i in range(30):
            try:
                timm.create_model(f"local-dir:{template_dir}", depth=2 + i % 2, width=32, pretrained=True)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
    finally:
        stop.set()
        thread.join()
    assert not errors
