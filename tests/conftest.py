"""Test environment: an isolated HF home and materialization cache, a loopback Hub, tiny templates.

huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported, so they are set here, at
conftest import, before any test module imports sweet_hub, timm or transformers.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="sweet-hub-tests-"))
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "tests"))

from hub_server import OlahServer, UploadServer, free_port

_OLAH_PORT = free_port()
os.environ.setdefault("HF_DATASETS_CACHE", str(Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "datasets"))
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_OLAH_PORT}"
os.environ["SWEET_HUB_CACHE"] = str(_SESSION_DIR / "sweet_cache")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)

import pytest
import torch

import sweet_hub

TINY = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, head_dim=16, ranks=(8, 16, 16), vector_rank=4,
            anchors=[(2, 32), (4, 64)])


def make_template(seed: int = 0, **overrides) -> sweet_hub.SweetTemplate:
    torch.manual_seed(seed)
    return sweet_hub.SweetTemplate(**{**TINY, **overrides})


@pytest.fixture()
def tiny_template() -> sweet_hub.SweetTemplate:
    return make_template()


@pytest.fixture()
def template_dir(tmp_path: Path, tiny_template) -> Path:
    path = tmp_path / "my-template"
    tiny_template.save_pretrained(path)
    return path


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch) -> Path:
    """A private materialization cache for one test."""
    path = tmp_path / "sweet_cache"
    monkeypatch.setenv("SWEET_HUB_CACHE", str(path))
    return path


class Hub:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.olah = OlahServer(root)
        self.olah.port = _OLAH_PORT
        self.olah.endpoint = f"http://127.0.0.1:{_OLAH_PORT}"
        self.endpoint = self.olah.endpoint
        self.uploads: UploadServer | None = None

    def add_repo(self, repo_id: str, folder: Path, message: str = "upload") -> str:
        return self.olah.add_repo(repo_id, folder, message)


@pytest.fixture(scope="session")
def hub():
    """olah on the HF_ENDPOINT port (downloads) + an upload server (pushes) on loopback."""
    server = Hub(_SESSION_DIR / "hub")
    server.olah.start()
    server.uploads = UploadServer(server.olah).start()
    yield server
    server.uploads.stop()
    server.olah.stop()


@pytest.fixture()
def hf_cache(tmp_path: Path) -> Path:
    """An empty HF cache dir for one test (pass as cache_dir=)."""
    path = tmp_path / "hf_cache"
    path.mkdir()
    return path
