"""The sweet-hub command: each verb on real files; bad input exits 2 with one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import timm
import torch

from sweet_hub.cli import main


def test_info(template_dir, capsys):
    assert main(["info", str(template_dir)]) == 0
    out = capsys.readouterr().out
    assert "SWEET template" in out and "4x64" in out and "anchor" in out
    assert main(["info", str(template_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ranks"] == [8, 16, 16] and [s["size"] for s in info["sizes"]] == ["2x32", "4x64"]
    model = timm.create_model(f"local-dir:{template_dir}", depth=4, width=64)
    assert info["sizes"][1]["model_params"] == sum(p.numel() for p in model.parameters())


def test_info_bundled(capsys):
    assert main(["info", "bundled"]) == 0
    assert "SWEET template" in capsys.readouterr().out


def test_materialize_reports_and_warms_the_cache(template_dir, fresh_cache, capsys):
    assert main(["materialize", str(template_dir), "--depth", "5", "--width", "80", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scalers"] == "derived from 4x64" and report["params"] > 0
    assert len(list(fresh_cache.glob("*.safetensors"))) == 1


def test_export_and_refuse_to_overwrite(template_dir, tmp_path, tiny_template, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(template_dir), "--depth", "3", "--width", "48", str(out)]) == 0
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    expected = tiny_template.materialize(3, 48)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
    before = (out / "model.safetensors").read_bytes()
    assert main(["export", str(template_dir), "--depth", "2", "--width", "32", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_bad_input_is_one_line_and_exit_2(template_dir, capsys):
    assert main(["export", str(template_dir), "--depth", "3", "--width", "50", "/tmp/never-written"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sweet-hub: error:") and "nearest valid widths: 48, 64" in err and "Traceback" not in err
    assert main(["info", "/no/such/folder"]) == 2


def test_console_script_is_installed(template_dir):
    result = subprocess.run([sys.executable, "-m", "sweet_hub.cli", "info", str(template_dir)], capture_output=True, text=True)
    assert result.returncode == 0 and "2x32" in result.stdout
    # The console script sits next to the interpreter (venv bin/), which need not be on PATH.
    script = shutil.which("sweet-hub", path=str(Path(sys.executable).parent)) or shutil.which("sweet-hub")
    assert script, f"console script 'sweet-hub' not installed next to {sys.executable}"
    result = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "sweet-hub" in result.stdout
