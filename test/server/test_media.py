"""The media policy on its own: size cap and timeout of remote fetches, local-path confinement."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from PIL import Image
from test_server import serve_files

from valora.server.media import MediaPolicy, resolve_image


@pytest.fixture
def pictures(tmp_path):
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "small.png")
    Image.effect_noise((512, 512), 64).convert("RGB").save(tmp_path / "big.png")
    return tmp_path


def test_remote_fetch_respects_the_size_cap(pictures):
    policy = MediaPolicy(allow_remote_media=True, max_image_bytes=4096)
    with serve_files(pictures) as base:
        assert resolve_image(base + "/small.png", policy).size == (64, 64)
        with pytest.raises(ValueError, match="exceeds 4096 bytes"):
            resolve_image(base + "/big.png", policy)


def test_remote_fetch_times_out():
    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(2)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    policy = MediaPolicy(allow_remote_media=True, fetch_timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(ValueError, match="cannot fetch image"):
        resolve_image(f"http://127.0.0.1:{httpd.server_address[1]}/x.png", policy)
    assert time.monotonic() - start < 1.5
    httpd.shutdown()


def test_local_files_stay_inside_the_allowed_directory(pictures, tmp_path_factory):
    policy = MediaPolicy(allowed_local_media_path=str(pictures))
    assert resolve_image(str(pictures / "small.png"), policy).size == (64, 64)
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (8, 8)).save(outside / "x.png")
    (pictures / "link.png").symlink_to(outside / "x.png")
    for path in (
        outside / "x.png",
        pictures / ".." / outside.name / "x.png",
        pictures / "link.png",
    ):
        with pytest.raises(ValueError, match="outside the allowed media directory"):
            resolve_image(str(path), policy)
