"""Bad input gets a clear error naming the problem and the fix, and nothing on disk changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from conftest import make_template
from safetensors import safe_open
from safetensors.torch import save_file

from sweet_hub import (
    NotASweetTemplateError,
    SizeError,
    SweetTemplate,
    TemplateConfigError,
    TemplateFileError,
    TemplateNotAvailableError,
)
from sweet_hub.files import atomic_write, save_safetensors


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("depth", [0, -3, 257, 10_000, 2.5])
def test_depth_out_of_range(tiny_template, depth):
    with pytest.raises(SizeError, match=r"depth must be an integer in \[1, 256\]"):
        tiny_template.materialize(depth, 32)


def test_width_not_a_multiple_of_head_dim_lists_nearest(tiny_template):
    with pytest.raises(SizeError, match="width=100 is not a multiple of head_dim=16.*nearest valid widths: 96, 112"):
        tiny_template.materialize(4, 100)
    with pytest.raises(SizeError, match="at least 16"):
        tiny_template.materialize(4, 8)
    with pytest.raises(SizeError, match="at most 16384"):
        tiny_template.materialize(2, 32768)


def test_timm_size_errors_are_the_same(template_dir):
    with pytest.raises(SizeError, match="nearest valid widths: 96, 112"):
        timm.create_model(f"local-dir:{template_dir}", depth=4, width=100, pretrained=True)
    with pytest.raises(SizeError, match="width=64 and embed_dim=80 disagree"):
        timm.create_model("sweet_vit", depth=2, width=64, embed_dim=80)
    with pytest.raises(SizeError, match="num_heads"):
        SweetTemplate(head_dim=16, ranks=(8, 16, 16), anchors=[(2, 32)]).materialize(2, 32, num_heads=4)


def test_missing_template_file(template_dir):
    (template_dir / "template.safetensors").unlink()
    with pytest.raises(TemplateFileError, match=r"template.safetensors: file is missing"):
        SweetTemplate.from_pretrained(template_dir)


def test_truncated_template_file(template_dir):
    path = template_dir / "template.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TemplateFileError, match=r"template.safetensors: not a readable safetensors file.*truncated or corrupted"):
        SweetTemplate.from_pretrained(template_dir)


def test_corrupted_scaler_file(template_dir):
    path = template_dir / "scalers" / "d2_w32.safetensors"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(TemplateFileError, match=r"d2_w32.safetensors: not a readable safetensors file"):
        SweetTemplate.from_pretrained(template_dir)


def test_missing_scaler_file(template_dir):
    (template_dir / "scalers" / "d4_w64.safetensors").unlink()
    with pytest.raises(TemplateFileError, match=r"d4_w64.safetensors: file is missing"):
        SweetTemplate.from_pretrained(template_dir)


def test_scaler_shapes_do_not_match_template(template_dir):
    path = template_dir / "scalers" / "d2_w32.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["U"] = torch.zeros(32, 99)
    save_safetensors(tensors, path, meta)
    with pytest.raises(TemplateFileError, match=r"d2_w32.safetensors: tensor 'U' has shape \(32, 99\) but config.json implies \(32, 16\)"):
        SweetTemplate.from_pretrained(template_dir)


def test_template_tensor_missing(template_dir):
    path = template_dir / "template.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "G_vec"}
    save_safetensors(tensors, path, meta)
    with pytest.raises(TemplateFileError, match=r"missing: \['G_vec'\]"):
        SweetTemplate.from_pretrained(template_dir)


def test_unknown_format_version_in_config(template_dir):
    config = json.loads((template_dir / "config.json").read_text())
    config["sweet_format_version"] = 99
    (template_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(TemplateConfigError, match="sweet_format_version 99 is not supported.*upgrade sweet-hub"):
        SweetTemplate.from_pretrained(template_dir)


def test_unknown_format_version_in_file(template_dir):
    path = template_dir / "template.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_safetensors(tensors, path, {**meta, "format_version": "7"})
    with pytest.raises(TemplateFileError, match="format_version '7' is not supported"):
        SweetTemplate.from_pretrained(template_dir)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("ranks"), "missing the field"),
    (lambda c: c.update(ranks=[8, 16]), "'ranks' must be 3 positive integers"),
    (lambda c: c.update(head_dim="16"), "'head_dim' must be a positive integer"),
    (lambda c: c.update(anchors=[[2, 30]]), "anchor width=30 is not a multiple of head_dim=16"),
    (lambda c: c.update(mean=[0.5, 0.5]), "'mean' must have in_chans=1 values"),
    (lambda c: c.update(scalers="d2_w32"), "'scalers' must map size names"),
    (lambda c: c["scalers"].pop("d4_w64"), r"anchors \['d4_w64'\] have no entry in 'scalers'"),
    (lambda c: c.update(img_size=30), "img_size=30 is not a multiple of patch_size=7"),
])
def test_config_with_missing_or_wrong_fields(template_dir, edit, message):
    config = json.loads((template_dir / "config.json").read_text())
    edit(config)
    (template_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(TemplateConfigError, match=message):
        SweetTemplate.from_pretrained(template_dir)


def test_config_not_json(template_dir):
    (template_dir / "config.json").write_text("{not json")
    with pytest.raises(TemplateConfigError, match="config.json is not valid JSON"):
        SweetTemplate.from_pretrained(template_dir)


def test_folder_that_is_not_a_template(tmp_path, tiny_template):
    from sweet_hub import export_timm

    with pytest.raises(NotASweetTemplateError, match="has no config.json"):
        SweetTemplate.from_pretrained(tmp_path)
    export_timm(tiny_template.materialize(2, 32), tmp_path / "plain")
    with pytest.raises(NotASweetTemplateError, match="not a SWEET template.*timm.create_model"):
        SweetTemplate.from_pretrained(tmp_path / "plain")


def test_nonexistent_local_path_is_not_taken_for_a_repo():
    with pytest.raises(TemplateNotAvailableError, match="neither an existing local folder nor a valid Hub repo id"):
        SweetTemplate.from_pretrained("/definitely/not/here")


def test_constructor_arguments_are_validated():
    with pytest.raises(TemplateConfigError, match="ranks"):
        SweetTemplate(ranks=(8, 16))
    with pytest.raises(TemplateConfigError, match="non-empty list"):
        SweetTemplate(anchors=[])
    with pytest.raises(TemplateConfigError, match="distinct"):
        SweetTemplate(head_dim=16, anchors=[(2, 32), (2, 32)])
    with pytest.raises(TemplateConfigError, match="global_pool"):
        SweetTemplate(global_pool="max")


def test_failed_load_changes_nothing_on_disk(template_dir):
    before = _snapshot(template_dir)
    path = template_dir / "scalers" / "d2_w32.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    before = _snapshot(template_dir)
    with pytest.raises(TemplateFileError):
        SweetTemplate.from_pretrained(template_dir)
    assert _snapshot(template_dir) == before


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def failing_write(tmp: str) -> None:
        Path(tmp).write_text("half-writ")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left behind


def test_interrupted_save_pretrained_keeps_previous_template(template_dir, monkeypatch):
    before = _snapshot(template_dir)
    from sweet_hub import files

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files, "save_file", boom)
    other = SweetTemplate(head_dim=16, ranks=(8, 16, 16), vector_rank=4, anchors=[(2, 32), (4, 64)])
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(template_dir)
    assert _snapshot(template_dir) == before
    assert not [p for p in template_dir.rglob("*.tmp")]


def test_written_files_have_normal_permissions(template_dir):
    mode = (template_dir / "template.safetensors").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(ranks=[100000, 100000, 100000]), r"'ranks' \[100000, 100000, 100000\] gives a core of"),
    (lambda c: c.update(label_names="abc"), "'label_names' must be a list of strings"),
    (lambda c: c.update(depth_rescale="no"), "'depth_rescale' must be true or false"),
    (lambda c: c.update(sweet_format_version=True), "sweet_format_version True is not supported"),
    (lambda c: c["scalers"].update(d2_w32="anchor"), "'scalers' entry 'd2_w32' must be an object"),
    (lambda c: c.update(std=[0.0]), "'std' must be positive"),
])
def test_wrong_config_values_are_refused_by_name(template_dir, edit, message):
    path = template_dir / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(TemplateConfigError, match=message):
        SweetTemplate.from_pretrained(template_dir)


@pytest.mark.parametrize("value,message", [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite")])
def test_non_finite_template_is_refused_with_the_tensor_name(template_dir, value, message):
    path = template_dir / "template.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["G"][0, 0, 0] = value
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(TemplateFileError, match=f"tensor 'G' holds 1 {message}"):
        SweetTemplate.from_pretrained(template_dir)


def test_half_precision_template_loads_and_integer_one_is_refused(template_dir):
    config = json.loads((template_dir / "config.json").read_text())
    del config["files"]  # a template converted by another tool carries no manifest of its own files
    (template_dir / "config.json").write_text(json.dumps(config))
    path = template_dir / "template.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(path), metadata=metadata)
    loaded = SweetTemplate.from_pretrained(template_dir)
    assert loaded.cores["G"].dtype == torch.float32
    save_file({k: v.to(torch.int32) for k, v in tensors.items()}, str(path), metadata=metadata)
    with pytest.raises(TemplateFileError, match="template.safetensors: tensor '.*' is stored as I32"):
        SweetTemplate.from_pretrained(template_dir)


def test_materializing_more_than_memory_is_a_size_error(tiny_template):
    with pytest.raises(SizeError, match=r"256x16384 needs about .* GiB to materialize"):
        tiny_template.materialize(256, 16384)


def test_file_replaced_by_hand_is_caught_by_the_manifest(template_dir):
    other = make_template(seed=5)
    other.save_pretrained(template_dir.parent / "other")
    (template_dir / "template.safetensors").write_bytes((template_dir.parent / "other" / "template.safetensors").read_bytes())
    with pytest.raises(TemplateFileError, match="does not match the SHA-256 recorded in config.json"):
        SweetTemplate.from_pretrained(template_dir)


_SAVER = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import make_template
a, b = make_template(seed=1), make_template(seed=2)
b.add_scalers(3, 48, b.scalers_for(3, 48))
for i in range({rounds}):
    (a if i % 2 else b).save_pretrained({folder!r})
"""


def test_loads_during_saves_never_mix_two_templates(tmp_path):
    """One process saves two different templates over the same folder in turn while this one
    loads it: every load is entirely one of them (the manifest catches the mix and re-reads)."""
    import subprocess
    import sys

    folder = tmp_path / "contended"
    a, b = make_template(seed=1), make_template(seed=2)
    b.add_scalers(3, 48, b.scalers_for(3, 48))
    a.save_pretrained(folder)
    saver = subprocess.Popen([sys.executable, "-c", _SAVER.format(tests=str(Path(__file__).parent), rounds=40, folder=str(folder))])
    loads = 0
    try:
        while saver.poll() is None:
            loaded = SweetTemplate.from_pretrained(folder)
            source = a if torch.equal(loaded.cores["G"], a.cores["G"]) else b
            assert loaded.sizes == source.sizes
            for d, w in source.sizes:
                assert torch.equal(loaded.stored_scalers(d, w)["U"], source.stored_scalers(d, w)["U"])
            loads += 1
    finally:
        saver.wait(timeout=120)
    assert saver.returncode == 0 and loads > 5


def test_full_disk_names_the_file_the_bytes_and_the_free_space(template_dir, tmp_path, monkeypatch):
    import errno

    from sweet_hub import DiskFullError, files

    before = _snapshot(template_dir)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "save_file", no_space)
    with pytest.raises(DiskFullError, match=r"No space left to write .*\.safetensors \([\d,]+ bytes needed, [\d,]+ free there\)"):
        make_template(seed=3).save_pretrained(template_dir)
    assert _snapshot(template_dir) == before and not list(template_dir.rglob("*.tmp"))
    from sweet_hub.cli import main

    monkeypatch.setattr(files, "save_file", no_space)
    assert main(["export", str(template_dir), "--depth", "2", "--width", "32", str(tmp_path / "e")]) == 2
