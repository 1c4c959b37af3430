"""``image_url`` parts -> decoded images, under the server's media policy.

Accepted: ``data:image/...;base64,`` URLs; local files (``file://`` or a plain path) only under
``allowed_local_media_path`` (resolved, so ``..`` and symlinks cannot leave it); http(s) only when
``allow_remote_media`` is on, fetched with a timeout and a size cap. Everything else, and any
image that does not decode, raises ``ValueError`` (-> 400). Byte size and the header's pixel
count are checked before any pixel is decoded.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from valora.multimodal import ImageProcessorConfig, load_image


@dataclass(frozen=True)
class MediaPolicy:
    allowed_local_media_path: str | None = None  # None: no local files
    allow_remote_media: bool = False
    fetch_timeout_s: float = 10.0
    max_image_bytes: int = 20 << 20  # encoded size, checked before decoding
    max_image_pixels: int = 32 << 20  # width x height from the header, checked before decoding
    max_images_per_request: int = 8


def resolve_image(url: str, policy: MediaPolicy) -> Image.Image:
    """Decode one image_url (blocking: run it off the event loop)."""
    config = ImageProcessorConfig(
        max_input_bytes=policy.max_image_bytes, max_input_pixels=policy.max_image_pixels
    )
    if url.startswith("data:"):
        return load_image(url, config)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        if not policy.allow_remote_media:
            raise ValueError(
                "http(s) image URLs are disabled on this server (--allow-remote-media)"
            )
        return load_image(_fetch(url, policy), config)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"unsupported image URL scheme {parsed.scheme!r}")
    return load_image(_local_file(unquote(parsed.path) if parsed.scheme else url, policy), config)


def _local_file(path: str, policy: MediaPolicy) -> Path:
    if policy.allowed_local_media_path is None:
        raise ValueError(
            "local image files are disabled on this server (--allowed-local-media-path)"
        )
    root = Path(policy.allowed_local_media_path).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"image path {path!r} is outside the allowed media directory")
    return target


def _fetch(url: str, policy: MediaPolicy) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=policy.fetch_timeout_s) as response:
            data = response.read(policy.max_image_bytes + 1)
    except OSError as exc:
        raise ValueError(f"cannot fetch image {url!r}: {exc}") from exc
    if len(data) > policy.max_image_bytes:
        raise ValueError(f"image at {url!r} exceeds {policy.max_image_bytes} bytes")
    return data
