"""A loopback Hugging Face Hub for the tests: olah serves downloads, a small server takes uploads.

Downloads go through olah (PyPI: a Hub mirror) serving local git repositories offline: it
speaks the ``resolve`` and ``api`` endpoints that ``hf_hub_download``/``snapshot_download`` use,
with real commit hashes, ETags and revisions. olah cannot receive uploads, so
:class:`UploadServer` implements the three endpoints ``HfApi.create_repo`` and
``HfApi.upload_folder`` call (repos/create, preupload, commit) and commits the files into the same
git repositories, so a push is immediately downloadable through olah.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["OlahServer", "UploadServer", "free_port", "git_commit_folder"]

_GIT = ["git", "-c", "user.email=tests@sweet-hub", "-c", "user.name=sweet-hub tests", "-c", "init.defaultBranch=main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_commit_folder(repo: Path, message: str = "update", branch: str = "main") -> str:
    """Commit everything in ``repo`` (initializing it if needed); returns the commit hash."""
    if not (repo / ".git").is_dir():
        subprocess.run([*_GIT, "init", "-q", "-b", branch], cwd=repo, check=True)
    # drop the index first: a file replaced by one of the same size within the filesystem's timestamp tick (and a
    # reused inode) looks unchanged to git's stat check, and a commit silently kept the old template (seen in CI)
    subprocess.run([*_GIT, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "."], cwd=repo, check=True)
    subprocess.run([*_GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*_GIT, "commit", "-q", "--allow-empty", "-m", message], cwd=repo, check=True)
    return subprocess.run([*_GIT, "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


class OlahServer:
    """olah serving ``mirrors/models/<org>/<name>`` git repos on loopback, offline."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirrors = root / "mirrors"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def repo_path(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def add_repo(self, repo_id: str, folder: Path, message: str = "upload") -> str:
        """Copy ``folder`` into a mirror repo and commit it; returns the commit hash."""
        target = self.repo_path(repo_id)
        target.mkdir(parents=True, exist_ok=True)
        for item in target.iterdir():
            if item.name != ".git":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        shutil.copytree(folder, target, dirs_exist_ok=True)
        return git_commit_folder(target, message)

    def start(self) -> OlahServer:
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.root / "olah-cache"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "metadata-cache-ttl = 0\n"
            "[accessibility]\noffline = true\n"
        )
        olah = Path(sys.executable).with_name("olah-cli")
        log = (self.root / "olah.log").open("wb")
        self.process = subprocess.Popen([str(olah), "-c", str(config)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.root / 'olah.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/api/models/none/none", timeout=1)
            except urllib.error.HTTPError:
                return self  # the server answers (404 for an unknown repo)
            except OSError:
                time.sleep(0.3)
                continue
            return self
        raise RuntimeError("olah did not start within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class _UploadHandler(BaseHTTPRequestHandler):
    server: UploadServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._json(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/validate-yaml":  # model card metadata check done by upload_folder
            return self._json(200, {"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            path = self.server.olah.repo_path(repo_id)
            if not path.is_dir():
                path.mkdir(parents=True)
                git_commit_folder(path, "initial commit")
            return self._json(200, {"url": f"{self.server.endpoint}/{repo_id}", "name": repo_id})
        match = re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/?]+)", self.path)
        if not match:
            return self._json(404, {"error": f"unsupported endpoint {self.path}"})
        repo = self.server.olah.repo_path(match["repo"])
        if not repo.is_dir():
            return self._json(404, {"error": "Repository not found"})
        if match["op"] == "preupload":
            files = json.loads(body)["files"]
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        summary = "upload"
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"].get("summary", summary)
            elif item["key"] == "file":
                target = repo / item["value"]["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(item["value"]["content"]))
            elif item["key"] == "deletedFile":
                (repo / item["value"]["path"]).unlink(missing_ok=True)
            else:
                return self._json(400, {"error": f"unsupported commit operation {item['key']}"})
        sha = git_commit_folder(repo, summary)
        self.server.commits.append((match["repo"], sha))
        return self._json(200, {"commitUrl": f"{self.server.endpoint}/{match['repo']}/commit/{sha}", "commitOid": sha,
                                "pullRequestUrl": None})


class UploadServer(ThreadingHTTPServer):
    """Receives uploads (create_repo, upload_folder) and commits them into olah's mirror repos."""

    def __init__(self, olah: OlahServer, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _UploadHandler)
        self.olah, self.token = olah, token
        self.commits: list[tuple[str, str]] = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> UploadServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


if __name__ == "__main__":  # manual use: python tests/hub_server.py ROOT
    server = OlahServer(Path(sys.argv[1])).start()
    print(server.endpoint, os.getpid())
    try:
        server.process.wait()
    finally:
        server.stop()
