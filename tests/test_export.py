"""Export: a stock timm repo that loads without sweet-hub, in timm and in transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from sweet_hub import export_timm

# Runs in a fresh interpreter that never imports sweet_hub, like a user's machine without it.
_LOAD_WITHOUT_SWEET_HUB = r"""
import json, sys, torch, timm
from transformers import AutoModelForImageClassification
folder = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(2, 1, 28, 28)
m = timm.create_model("local-dir:" + folder, pretrained=True).eval()
hf = AutoModelForImageClassification.from_pretrained(folder).eval()
with torch.no_grad():
    a = m(x)
    b = hf(pixel_values=x).logits
assert "sweet_hub" not in sys.modules
print(json.dumps({"timm": a.tolist(), "transformers": b.tolist(), "arch": type(m).__name__}))
"""


def test_export_loads_in_stock_timm_and_transformers(tiny_template, tmp_path):
    model = tiny_template.materialize(3, 48, num_classes=4)
    export_timm(model, tmp_path / "export", provenance={"template": "tests"})
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architecture"] == "vit_base_patch16_224"
    assert "num_classes" not in config["model_args"] and config["num_classes"] == 4
    assert config["model_args"]["embed_dim"] == 48 and config["model_args"]["depth"] == 3
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["README.md", "config.json", "model.safetensors"]

    result = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_SWEET_HUB, str(tmp_path / "export")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(torch.tensor(out["timm"]), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(out["transformers"]), expected, atol=1e-5, rtol=1e-5)
    assert out["arch"] == "VisionTransformer"


def test_export_of_a_timm_created_model_drops_sweet_only_args(template_dir, tmp_path, fresh_cache):
    import timm

    model = timm.create_model(f"local-dir:{template_dir}", depth=2, width=32, pretrained=True)
    export_timm(model, tmp_path / "export")
    args = json.loads((tmp_path / "export" / "config.json").read_text())["model_args"]
    assert "width" not in args and args["embed_dim"] == 32
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_export_card_links_the_template_repo(tiny_template, tmp_path):
    from huggingface_hub import ModelCard

    export_timm(tiny_template.materialize(3, 48), tmp_path / "e", provenance={"template": "org/tmpl", "scalers": "derived"})
    card = ModelCard.load(tmp_path / "e" / "README.md")
    assert card.data.library_name == "timm" and card.data.base_model == "org/tmpl"
    assert "3x48" in card.text
