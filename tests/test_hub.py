"""Checkpoints by name or URL, downloaded from an HTTP server the test runs on 127.0.0.1 (never the internet)."""

import argparse
import http.server
import os
import re
import socket
import stat
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

import anchordetr_trt as at
from anchordetr_trt import hub

CHUNK = 1 << 20


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    """A released-layout r50-c5 checkpoint (random weights), as bytes."""
    torch.manual_seed(0)
    args = argparse.Namespace(backbone="resnet50", dilation=False)
    path = tmp_path_factory.mktemp("served") / "model.pth"
    torch.save({"model": at.build_model(at.VARIANTS["r50-c5"]).state_dict(), "args": args}, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def server(checkpoint_bytes):
    """http://127.0.0.1:PORT serving /model.pth, /truncated.pth (half the body, then the connection
    closes), /page.pth (an HTML page) and 404 for anything else; ``requests`` lists the paths asked."""
    requests = []
    html = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path == "/model.pth":
                body, length = checkpoint_bytes, len(checkpoint_bytes)
            elif self.path == "/truncated.pth":
                body, length = checkpoint_bytes[: len(checkpoint_bytes) // 2], len(checkpoint_bytes)
            elif self.path == "/page.pth":
                body, length = html, len(html)
            else:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            for start in range(0, len(body), CHUNK):
                self.wfile.write(body[start : start + CHUNK])
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", requests=requests)
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_url_is_downloaded_once_then_read_from_the_cache(server, tmp_path, checkpoint_bytes):
    url = f"{server.url}/model.pth"
    before = len(server.requests)
    model = at.load_model(url, download_dir=tmp_path)
    assert model.config == at.VARIANTS["r50-c5"]
    cached = hub.cached_path(url, tmp_path)
    assert cached.read_bytes() == checkpoint_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [cached.name]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(cached.stat().st_mode) == 0o666 & ~umask  # as open() makes it, not private
    again = at.load_model(url, download_dir=tmp_path)
    assert len(server.requests) == before + 1  # the second load did not download
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing.pth", "HTTP 404 Not Found; check the address, or download the file by hand"),
        ("/truncated.pth", r"is not a usable checkpoint \(.*truncated.*\); nothing was kept"),
        ("/page.pth", r"served a web page, not a checkpoint .* nothing was kept"),
    ],
)
def test_failed_download_raises_and_leaves_nothing(server, tmp_path, path, message):
    with pytest.raises(at.CheckpointError, match=message):
        at.load_model(f"{server.url}{path}", download_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{_unused_port()}/model.pth"
    with pytest.raises(at.CheckpointError, match=rf"downloading {re.escape(url)} failed .*check the network"):
        at.load_model(url, download_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def fake_gdown(monkeypatch, checkpoint_bytes):
    """A stand-in for the gdown package that writes the checkpoint where asked and records the call."""
    calls = []

    def download(url, output, quiet, fuzzy):
        calls.append(url)
        with open(output, "wb") as f:
            f.write(checkpoint_bytes)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download, calls=calls))
    return calls


@pytest.mark.parametrize("name", ["R50-C5", "r50-c5"])
def test_released_model_by_name(fake_gdown, tmp_path, monkeypatch, name):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    model = at.load_model(name)
    assert fake_gdown == [hub.OFFICIAL_CHECKPOINTS["r50-c5"]]
    assert "1ktLJyw4PGdaXkOn61W537Z67WHcttXDs" in fake_gdown[0]  # the official README's R50-C5 link
    assert model.config == at.VARIANTS["r50-c5"]
    assert (tmp_path / "anchordetr_r50-c5.pth").is_file()


def test_cache_location_rule(tmp_path, monkeypatch):
    monkeypatch.delenv(hub.CACHE_ENV, raising=False)
    default = hub.cache_dir()
    assert default.parts[-2:] == ("checkpoints", "anchordetr")
    assert str(default).startswith(torch.hub.get_dir())
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "env"))
    assert hub.cache_dir() == tmp_path / "env"
    assert hub.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert hub.cache_dir("~/ckpts") == Path.home() / "ckpts"  # not a folder named "~" in the cwd
    a, b = hub.cached_path("http://a.example/m.pth"), hub.cached_path("http://b.example/m.pth")
    assert a != b and a.name.endswith("-m.pth")


def test_google_drive_without_gdown(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown raises ImportError
    with pytest.raises(at.CheckpointError, match=re.escape("needs the gdown package: pip install gdown")):
        at.load_model("R101-DC5", download_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_google_drive_refusal(tmp_path, monkeypatch):
    def download(url, output, quiet, fuzzy):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    with pytest.raises(
        at.CheckpointError, match=r"Google Drive failed \(Too many users.*download the file in a browser"
    ):
        at.load_model("r50-dc5", download_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a user's file")
    with pytest.raises(
        at.InputError,
        match=r"download_dir=.*/sub' cannot be created \(Not a directory\): pass a writable folder",
    ):
        at.load_model("http://127.0.0.1:9/model.pth", download_dir=blocker / "sub")
    assert blocker.read_text() == "a user's file"


def test_a_local_file_named_like_a_release_wins(tmp_path, monkeypatch, checkpoint_bytes):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "gdown", None)  # a download attempt would raise
    (tmp_path / "R50-C5").write_bytes(checkpoint_bytes)
    assert at.load_model("R50-C5").config == at.VARIANTS["r50-c5"]
