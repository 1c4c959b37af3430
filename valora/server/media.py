"""``image_url`` / ``video_url`` parts -> decoded images and video frames, under the server's
media policy.

Accepted: ``data:image/...;base64,`` / ``data:video/...;base64,`` URLs; local files (``file://``
or a plain path) only under ``allowed_local_media_path`` (resolved, so ``..`` and symlinks cannot
leave it); http(s) only when ``allow_remote_media`` is on, fetched with a timeout and a size cap.
Everything else, and any image or video that does not decode, raises ``ValueError`` (-> 400).
Byte size and the header's pixel count (a video's duration, frame size and sampled frame count
too) are checked before any pixel is decoded.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from valora.multimodal import ImageProcessorConfig, load_image
from valora.video import VideoProcessorConfig, load_video


@dataclass(frozen=True)
class MediaPolicy:
    allowed_local_media_path: str | None = None  # None: no local files
    allow_remote_media: bool = False
    fetch_timeout_s: float = 10.0
    max_image_bytes: int = 20 << 20  # encoded size, checked before decoding
    max_image_pixels: int = 32 << 20  # width x height from the header, checked before decoding
    max_images_per_request: int = 8
    max_videos_per_request: int = 2
    max_video_bytes: int = 64 << 20
    max_video_duration_s: float = 600.0
    max_video_frame_pixels: int = 1920 * 1088  # source frame size, from the stream header
    max_video_frames: int = 128  # frames kept after fps sampling (bounds decoded memory)

    def video_limits(self, config: VideoProcessorConfig) -> VideoProcessorConfig:
        """The processor's settings with this server's limits."""
        return replace(
            config,
            max_input_bytes=self.max_video_bytes,
            max_duration_s=self.max_video_duration_s,
            max_frame_pixels=self.max_video_frame_pixels,
            max_frames_per_video=min(config.max_frames_per_video, self.max_video_frames),
        )


def resolve_video(url: str, policy: MediaPolicy, config: VideoProcessorConfig) -> np.ndarray:
    """Decode one video_url to its sampled frames [T, H, W, 3] uint8 (blocking: run it off the
    event loop); ``config`` carries fps / frame bounds (the request's) and the limits."""
    config = policy.video_limits(config)
    return _resolve(url, policy, "video", policy.max_video_bytes, lambda s: load_video(s, config))


def resolve_image(url: str, policy: MediaPolicy) -> Image.Image:
    """Decode one image_url (blocking: run it off the event loop)."""
    config = ImageProcessorConfig(
        max_input_bytes=policy.max_image_bytes, max_input_pixels=policy.max_image_pixels
    )
    return _resolve(url, policy, "image", policy.max_image_bytes, lambda s: load_image(s, config))


def _resolve(url: str, policy: MediaPolicy, kind: str, max_bytes: int, load: Callable):
    """A data URL, an allowed http(s) URL or an allowed local file -> ``load(source)``."""
    if url.startswith("data:"):
        return load(url)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        if not policy.allow_remote_media:
            raise ValueError(
                f"http(s) {kind} URLs are disabled on this server (--allow-remote-media)"
            )
        return load(_fetch(url, policy, max_bytes, kind))
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"unsupported {kind} URL scheme {parsed.scheme!r}")
    return load(_local_file(unquote(parsed.path) if parsed.scheme else url, policy))


def _local_file(path: str, policy: MediaPolicy) -> Path:
    if policy.allowed_local_media_path is None:
        raise ValueError(
            "local media files are disabled on this server (--allowed-local-media-path)"
        )
    root = Path(policy.allowed_local_media_path).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"media path {path!r} is outside the allowed media directory")
    return target


def _fetch(url: str, policy: MediaPolicy, max_bytes: int, what: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=policy.fetch_timeout_s) as response:
            data = response.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"cannot fetch {what} {url!r}: {exc}") from exc
    if len(data) > max_bytes:
        raise ValueError(f"{what} at {url!r} exceeds {max_bytes} bytes")
    return data
