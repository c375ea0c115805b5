"""The real download path (hf_hub_download through a loopback Hub), revisions, offline mode, push."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import make_template
from huggingface_hub import constants

from sweet_hub import NotASweetTemplateError, SweetTemplate, TemplateNotAvailableError, export_timm


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_from_pretrained_downloads_into_the_hf_cache(hub, template_dir, hf_cache, tiny_template):
    sha = hub.add_repo("org/tmpl-download", template_dir)
    loaded = SweetTemplate.from_pretrained("org/tmpl-download", cache_dir=hf_cache)
    assert torch.equal(loaded.cores["G"], tiny_template.cores["G"])
    snapshot = hf_cache / "models--org--tmpl-download" / "snapshots" / sha
    assert (snapshot / "template.safetensors").is_file() and (snapshot / "scalers" / "d4_w64.safetensors").is_file()
    assert _same_weights(loaded.materialize(3, 48), tiny_template.materialize(3, 48))


def test_revisions_branch_and_commit(hub, tmp_path, hf_cache):
    v1, v2 = make_template(seed=1), make_template(seed=2)
    v1.save_pretrained(tmp_path / "v1")
    v2.save_pretrained(tmp_path / "v2")
    sha1 = hub.add_repo("org/tmpl-revisions", tmp_path / "v1", "v1")
    hub.add_repo("org/tmpl-revisions", tmp_path / "v2", "v2")
    latest = SweetTemplate.from_pretrained("org/tmpl-revisions", cache_dir=hf_cache)
    old = SweetTemplate.from_pretrained("org/tmpl-revisions", revision=sha1, cache_dir=hf_cache)
    assert torch.equal(latest.cores["G"], v2.cores["G"])
    assert torch.equal(old.cores["G"], v1.cores["G"])
    # the repo@revision form used by timm ids
    assert torch.equal(SweetTemplate.from_pretrained(f"org/tmpl-revisions@{sha1}", cache_dir=hf_cache).cores["G"], v1.cores["G"])


def test_timm_hf_hub_id_and_overlay(hub, template_dir, hf_cache, fresh_cache, tiny_template):
    hub.add_repo("org/tmpl-timm", template_dir)
    expected = tiny_template.materialize(3, 48)
    by_id = timm.create_model("hf-hub:org/tmpl-timm", depth=3, width=48, pretrained=True, cache_dir=hf_cache)
    by_overlay = timm.create_model("sweet_vit", depth=3, width=48, pretrained=True, cache_dir=hf_cache,
                                   pretrained_cfg_overlay=dict(hf_hub_id="org/tmpl-timm"))
    assert _same_weights(by_id, expected) and _same_weights(by_overlay, expected)
    assert by_id.pretrained_cfg["hf_hub_id"] == "org/tmpl-timm"
    assert "file" not in by_id.pretrained_cfg  # the cache path is not leaked as the weight source


def test_offline_with_warm_cache(hub, template_dir, hf_cache, monkeypatch, tiny_template):
    hub.add_repo("org/tmpl-offline", template_dir)
    SweetTemplate.from_pretrained("org/tmpl-offline", cache_dir=hf_cache)  # warm the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = SweetTemplate.from_pretrained("org/tmpl-offline", cache_dir=hf_cache)
    assert torch.equal(loaded.cores["G"], tiny_template.cores["G"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert torch.equal(SweetTemplate.from_pretrained("org/tmpl-offline", cache_dir=hf_cache, local_files_only=True).cores["G"],
                       tiny_template.cores["G"])


def test_offline_with_cold_cache_says_what_to_do(hub, template_dir, hf_cache, monkeypatch):
    hub.add_repo("org/tmpl-cold", template_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TemplateNotAvailableError, match=r"not in the local Hugging Face cache.*hf download org/tmpl-cold"):
        SweetTemplate.from_pretrained("org/tmpl-cold", cache_dir=hf_cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(TemplateNotAvailableError, match="HF_HUB_OFFLINE"):
        SweetTemplate.from_pretrained("org/tmpl-cold", cache_dir=hf_cache, local_files_only=True)


def test_offline_env_var_in_a_fresh_process(hub, template_dir, tmp_path):
    """HF_HUB_OFFLINE=1 set before import, as users do: a warm cache loads, timm id included."""
    hub.add_repo("org/tmpl-env", template_dir)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "SWEET_HUB_CACHE": str(tmp_path / "sweet")}
    script = ("import sweet_hub, timm; m = timm.create_model('hf-hub:org/tmpl-env', depth=2, width=32, pretrained=True); "
              "print(m.embed_dim)")
    warm = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert warm.returncode == 0, warm.stderr[-2000:]
    offline = subprocess.run([sys.executable, "-c", script], env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                             timeout=120)
    assert offline.returncode == 0, offline.stderr[-2000:]
    assert offline.stdout.strip() == "32"


def test_missing_repo(hub, hf_cache):
    with pytest.raises(TemplateNotAvailableError, match="neither a local folder nor a repository"):
        SweetTemplate.from_pretrained("org/does-not-exist", cache_dir=hf_cache)


def test_plain_timm_repo_is_not_a_template_but_loads_in_timm(hub, tiny_template, tmp_path, hf_cache, fresh_cache):
    model = tiny_template.materialize(2, 32)
    export_timm(model, tmp_path / "exported")
    hub.add_repo("org/plain-vit", tmp_path / "exported")
    with pytest.raises(NotASweetTemplateError, match="not a SWEET template"):
        SweetTemplate.from_pretrained("org/plain-vit", cache_dir=hf_cache)
    loaded = timm.create_model("hf-hub:org/plain-vit", pretrained=True, cache_dir=hf_cache)
    assert _same_weights(loaded, model)


def test_push_to_hub_round_trip(hub, tiny_template, hf_cache, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", hub.uploads.endpoint)  # uploads go to the upload server
    tiny_template.push_to_hub("org/pushed-template")
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)  # downloads through olah
    loaded = SweetTemplate.from_pretrained("org/pushed-template", cache_dir=hf_cache)
    assert torch.equal(loaded.cores["G"], tiny_template.cores["G"])
    assert loaded.sizes == tiny_template.sizes
    assert hub.uploads.commits[-1][0] == "org/pushed-template"


def test_cli_push_validates_then_uploads(hub, template_dir, tmp_path, hf_cache, monkeypatch):
    from sweet_hub.cli import main

    monkeypatch.setattr(constants, "ENDPOINT", hub.uploads.endpoint)
    assert main(["push", str(template_dir), "org/cli-pushed"]) == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"sweet_format_version": 1}))
    assert main(["push", str(broken), "org/cli-broken"]) == 2
    assert not hub.olah.repo_path("org/cli-broken").exists()  # nothing uploaded
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    assert SweetTemplate.from_pretrained("org/cli-pushed", cache_dir=hf_cache).sizes == [(2, 32), (4, 64)]


def test_hub_dataset_id_loads_online_then_offline(hub, tmp_path):
    """training/data.py reads any Hub dataset through `datasets`, from the HF cache when offline."""
    import datasets
    from hub_server import git_commit_folder
    from PIL import Image

    repo = hub.olah.mirrors / "datasets" / "org" / "tiny-images"
    (repo / "data").mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "light"])})
    ds = datasets.Dataset.from_dict({"image": [Image.new("L", (32, 32), v) for v in range(0, 240, 12)],
                                     "label": [int(v >= 120) for v in range(0, 240, 12)]}, features=features)
    ds.to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train-*\n---\n# tiny images\n")
    git_commit_folder(repo)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    code = ("import sys; sys.path.insert(0, %r); from training.data import load_image_tensors; "
            "t = load_image_tensors('org/tiny-images', 'train', 28, 1); print(tuple(t.images.shape), sum(t.labels.tolist()))"
            % str(Path(__file__).resolve().parent.parent))
    for extra in ({}, {"HF_HUB_OFFLINE": "1"}):
        result = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split()[-1] == "10" and "(20, 1, 28, 28)" in result.stdout


def test_push_uses_the_token(hub, tiny_template, monkeypatch):
    from hub_server import UploadServer
    from huggingface_hub.errors import HfHubHTTPError

    private = UploadServer(hub.olah, token="hf_secret").start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", private.endpoint)
        with pytest.raises(HfHubHTTPError, match="401"):
            tiny_template.push_to_hub("org/private-template", token="hf_wrong")
        tiny_template.push_to_hub("org/private-template", token="hf_secret", private=True)
        assert private.commits[-1][0] == "org/private-template"
    finally:
        private.stop()


def test_pretrained_false_downloads_config_json_only(hub, template_dir, hf_cache):
    sha = hub.add_repo("org/tmpl-config-only", template_dir)
    model = timm.create_model("hf-hub:org/tmpl-config-only", depth=3, width=48, pretrained=False, cache_dir=hf_cache)
    assert model.blocks[0].attn.num_heads == 3  # the template's head_dim (16), from config.json
    snapshot = hf_cache / "models--org--tmpl-config-only" / "snapshots" / sha
    assert sorted(p.name for p in snapshot.rglob("*") if p.is_file()) == ["config.json"]


def test_cli_push_uploads_only_the_artefact_and_refuses_escaping_symlinks(hub, template_dir, tmp_path, monkeypatch, capsys):
    from sweet_hub.cli import main

    secret = tmp_path / "secret.txt"
    secret.write_text("token=hf_xxx")
    (template_dir / ".env").write_text("HF_TOKEN=hf_xxx")
    (template_dir / "notes.pkl").write_bytes(b"\x80\x04pickle")
    (template_dir / "leak.txt").symlink_to(secret)
    monkeypatch.setattr(constants, "ENDPOINT", hub.uploads.endpoint)
    assert main(["push", str(template_dir), "org/cli-allow-list"]) == 0
    out = capsys.readouterr().out
    assert "Not uploaded" in out and "notes.pkl" in out and "leak.txt" in out and ".env" in out
    repo = hub.olah.repo_path("org/cli-allow-list")
    listed = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert sorted(listed) == sorted(["config.json", "README.md", "template.safetensors", "scalers/d2_w32.safetensors",
                                     "scalers/d4_w64.safetensors"])
    # a file of the artefact that is a symlink leaving the folder is refused, nothing uploaded
    (template_dir / "README.md").unlink()
    (template_dir / "README.md").symlink_to(secret)
    assert main(["push", str(template_dir), "org/cli-symlink"]) == 2
    assert "outside" in capsys.readouterr().err
    assert not hub.olah.repo_path("org/cli-symlink").exists()


def test_fit_from_an_hf_hub_checkpoint(hub, tmp_path, hf_cache, fresh_cache, monkeypatch):
    """`sweet-hub fit hf-hub:...` downloads a plain timm repo (hf_hub_download through the loopback Hub) and fits it."""
    from sweet_hub.cli import main as cli

    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=2,
                               embed_dim=64, num_heads=2).eval()
    export_timm(source, tmp_path / "plain")
    hub.add_repo("org/vit-to-fit", tmp_path / "plain")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    assert cli(["fit", "hf-hub:org/vit-to-fit", "--out", str(tmp_path / "fitted"), "--no-knn"]) == 0
    fitted = SweetTemplate.from_pretrained(tmp_path / "fitted")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(fitted.materialize(2, 64)(x), source(x), rtol=1e-4, atol=1e-5)
    assert fitted.card_info["fit"]["source"] == "hf-hub:org/vit-to-fit"


def test_mirror_commit_records_a_same_size_rewrite_that_git_stat_data_misses(tmp_path):
    """The test Hub's commits hash every file: a same-size rewrite with the old mtime (what two saves within one
    timestamp tick look like to git) must still land in the next commit (it once did not, and a revision test
    read the old template under the new config.json)."""
    import os
    import subprocess

    from hub_server import _GIT, git_commit_folder

    repo = tmp_path / "repo"
    repo.mkdir()
    weights = repo / "template.safetensors"
    weights.write_bytes(b"a" * 64)
    old = 946_684_800_000_000_000  # an mtime well before the index is written (not a "racy" entry git would re-hash)
    os.utime(weights, ns=(old, old))
    git_commit_folder(repo, "v1")
    subprocess.run([*_GIT, "config", "core.trustctime", "false"], cwd=repo, check=True)  # as if ctime had not moved
    with weights.open("r+b") as f:  # same inode, same size
        f.write(b"b" * 64)
    os.utime(weights, ns=(old, old))  # same mtime
    git_commit_folder(repo, "v2")
    shown = subprocess.run([*_GIT, "show", "HEAD:template.safetensors"], cwd=repo, check=True, capture_output=True).stdout
    assert shown == b"b" * 64
