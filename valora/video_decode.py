"""Video files -> sampled RGB frames, with PyAV (FFmpeg).

The container's metadata (frame count, average rate, duration, frame size) is read and checked
against the limits before any frame is decoded; frames are then sampled by ``cfg.fps`` exactly as
transformers' ``Qwen2VLVideoProcessor.sample_frames`` samples them, and decoding stops at the last
needed frame. Only a list of video demuxers is accepted (no image, playlist or concat demuxers)
and FFmpeg may open no nested input (``protocol_whitelist``), so a file cannot make FFmpeg read
other files or URLs. Every decoding failure is a ``ValueError("cannot decode video: ...")``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

# FFmpeg demuxer names; a name matches any comma-separated part of a demuxer's name
VIDEO_DEMUXERS = "mov,matroska,webm,avi,mpegts,flv,ogg,asf,mpeg,m4v,h264,hevc,ivf,obu"
_OPEN_OPTIONS = {"format_whitelist": VIDEO_DEMUXERS, "protocol_whitelist": "none"}


@dataclass(frozen=True)
class VideoProcessorConfig:
    min_pixels: int = 128 * 28 * 28  # per frame, after resizing
    max_pixels: int = 768 * 28 * 28
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    fps: float = 2.0  # frames sampled per second of a decoded file
    min_frames: int = 4
    max_frames: int = 768
    # refused before frames are decoded
    max_input_bytes: int = 256 << 20  # encoded size
    max_duration_s: float = 600.0
    max_frame_pixels: int = 16_000_000  # width * height of the source frames
    max_frames_per_video: int = 768  # frames kept after sampling (or given as arrays)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class VideoMetadata:
    """What the container says before decoding; ``total_num_frames`` 0 means unknown."""

    total_num_frames: int
    fps: float | None  # the stream's average frame rate
    duration_s: float | None
    width: int
    height: int


def decode_video(source: bytes | Path, cfg: VideoProcessorConfig) -> np.ndarray:
    """Encoded video (bytes or a file path) -> sampled frames, uint8 [T, H, W, 3] RGB."""
    try:
        meta = probe_video(source, cfg)
        total = meta.total_num_frames or _count_frames(source, meta, cfg)
        indices = sample_frame_indices(total, meta.fps, cfg)
        if len(indices) > cfg.max_frames_per_video:
            raise ValueError(
                f"video would give {len(indices)} frames, over the limit of "
                f"{cfg.max_frames_per_video} frames per video"
            )
        frames = _decode_frames(source, indices, meta)
    except (av.FFmpegError, OSError) as exc:
        raise ValueError(f"cannot decode video: {exc}") from exc
    if not frames:
        raise ValueError("cannot decode video: no frame decoded")
    return np.stack(frames)


def probe_video(source: bytes | Path, cfg: VideoProcessorConfig) -> VideoMetadata:
    """Read the first video stream's metadata and refuse it when over ``cfg``'s limits."""
    with _open(source) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        duration = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        frames = stream.frames or 0
        if not frames and duration and fps:
            frames = round(duration * fps)  # an estimate: the container has no frame count
        if duration is None and frames and fps:
            duration = frames / fps
        meta = VideoMetadata(
            frames, fps, duration, stream.codec_context.width, stream.codec_context.height
        )
    _check_limits(meta, cfg)
    return meta


def _check_limits(meta: VideoMetadata, cfg: VideoProcessorConfig) -> None:
    if meta.fps is None:
        raise ValueError("cannot decode video: the stream has no frame rate")
    if meta.width <= 0 or meta.height <= 0:
        raise ValueError("cannot decode video: the stream has no frame size")
    if meta.width * meta.height > cfg.max_frame_pixels:
        raise ValueError(
            f"video frames of {meta.width}x{meta.height} pixels exceed the limit of "
            f"{cfg.max_frame_pixels} pixels per frame"
        )
    if meta.duration_s is not None and meta.duration_s > cfg.max_duration_s:
        raise ValueError(
            f"video of {meta.duration_s:.1f} s exceeds the limit of {cfg.max_duration_s} s"
        )


def sample_frame_indices(total: int, video_fps: float, cfg: VideoProcessorConfig) -> list[int]:
    """Frame indices to keep: transformers' ``Qwen2VLVideoProcessor.sample_frames`` with ``fps``.

    The count is ``total / video_fps * cfg.fps`` clamped to ``[min_frames, max_frames]`` (at most
    ``total``) and floored to a multiple of ``temporal_patch_size``; a video shorter than
    ``temporal_patch_size`` frames keeps all of them.
    """
    t = cfg.temporal_patch_size
    if total < t:
        return list(range(total))
    max_frames = math.floor(min(cfg.max_frames, total) / t) * t
    num_frames = total / video_fps * cfg.fps
    num_frames = min(max(num_frames, cfg.min_frames), max_frames, total)
    num_frames = max(t, math.floor(num_frames / t) * t)
    return torch.arange(0, total, total / num_frames).int().tolist()


def _count_frames(source: bytes | Path, meta: VideoMetadata, cfg: VideoProcessorConfig) -> int:
    """Decode to count frames (no count or duration in the container), within the limits."""
    limit = math.floor(cfg.max_duration_s * meta.fps)
    count = 0
    with _open(source) as container:
        for _ in container.decode(container.streams.video[0]):
            count += 1
            if count > limit:
                raise ValueError(
                    f"video of over {count} frames at {meta.fps:g} fps exceeds the limit of "
                    f"{cfg.max_duration_s} s"
                )
    return count


def _decode_frames(source: bytes | Path, indices: list[int], meta: VideoMetadata) -> list:
    """The frames at ``indices`` (sorted) as RGB uint8 [H, W, 3], stopping at the last one."""
    wanted, frames = set(indices), []
    if not indices:
        return frames
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                size = {}  # a frame whose size changed mid-stream is scaled to the header's
                if (frame.width, frame.height) != (meta.width, meta.height):
                    size = {"width": meta.width, "height": meta.height}
                frames.append(frame.to_ndarray(format="rgb24", **size))
            if i >= indices[-1]:
                break
    return frames


@contextlib.contextmanager
def _open(source: bytes | Path) -> Iterator[av.container.InputContainer]:
    """An input container on ``source`` with a video stream; closed on exit."""
    with contextlib.ExitStack() as stack:
        file = (
            io.BytesIO(source)
            if isinstance(source, bytes)
            else stack.enter_context(open(source, "rb"))
        )
        try:
            container = stack.enter_context(av.open(file, container_options=_OPEN_OPTIONS))
        except av.ArgumentError as exc:
            raise ValueError(
                "cannot decode video: not a supported video container (mp4/mov, mkv/webm, avi, "
                f"mpeg-ts/ps, flv, ogg, asf, raw h264/hevc/m4v/ivf/obu): {exc}"
            ) from exc
        if not container.streams.video:
            raise ValueError("cannot decode video: the file has no video stream")
        yield container
