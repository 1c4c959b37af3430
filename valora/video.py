"""Video input: loading and Qwen2-VL video preprocessing.

``process_video`` computes exactly what transformers' ``Qwen2VLVideoProcessor`` (torchvision
backend, on CPU) computes: every frame resized to ``smart_resize`` of the frame size (bicubic with
antialiasing, natively on uint8, skipped when the size is unchanged), rescale and CLIP
normalisation fused into ``(x - mean * 255) / (std * 255)`` in float32, the frame count padded to
a multiple of ``temporal_patch_size`` by repeating the last frame, and patch flattening with each
2x2 merge window contiguous. Files are decoded and sampled by ``fps`` in ``valora.video_decode``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from valora.multimodal import (
    CLIP_MEAN,
    CLIP_STD,
    ProcessedVision,
    decode_data_url,
    smart_resize,
)
from valora.video_decode import VideoProcessorConfig, decode_video

__all__ = ["VideoProcessorConfig", "load_video", "process_video"]


def load_video(source, cfg: VideoProcessorConfig = VideoProcessorConfig()) -> np.ndarray:
    """A video -> its frames, uint8 [T, H, W, 3] RGB.

    ``source``: frames as given (a uint8 ndarray or torch tensor [T, H, W, 3], or a list of PIL
    images of one size); or an encoded file (bytes, a ``data:video/<type>;base64,`` URL or a local
    path), decoded and sampled at ``cfg.fps``. Raises ``ValueError`` for anything else, anything
    that does not decode, or anything over ``cfg``'s limits.
    """
    if isinstance(source, torch.Tensor):
        if source.dtype != torch.uint8:
            raise ValueError(f"video tensor must be uint8 [T, H, W, 3], got {source.dtype}")
        frames = _check_array(source.detach().cpu().numpy())
    elif isinstance(source, np.ndarray):
        frames = _check_array(source)
    elif isinstance(source, (list, tuple)):
        frames = _stack_images(source, cfg)
    else:
        frames = decode_video(_encoded_video(source, cfg), cfg)
    _check_frames(frames, cfg)
    return frames


def _check_array(frames: np.ndarray) -> np.ndarray:
    if frames.dtype != np.uint8:
        raise ValueError(f"video array must be uint8 [T, H, W, 3], got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"video array must be uint8 [T, H, W, 3], got shape {frames.shape}")
    return np.ascontiguousarray(frames)


def _stack_images(images, cfg: VideoProcessorConfig) -> np.ndarray:
    if not images:
        raise ValueError("a video given as a list of frames needs at least one frame")
    if not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("a video given as a list must be a list of PIL images")
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"video frames must all have one size, got {sorted(sizes)}")
    width, height = images[0].size
    if width * height > cfg.max_frame_pixels:  # before any conversion
        raise ValueError(
            f"video frames of {width}x{height} pixels exceed the limit of "
            f"{cfg.max_frame_pixels} pixels per frame"
        )
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


def _check_frames(frames: np.ndarray, cfg: VideoProcessorConfig) -> None:
    num_frames, height, width, _ = frames.shape
    if num_frames > cfg.max_frames_per_video:
        raise ValueError(
            f"video of {num_frames} frames exceeds the limit of {cfg.max_frames_per_video} frames"
        )
    if height * width > cfg.max_frame_pixels:
        raise ValueError(
            f"video frames of {width}x{height} pixels exceed the limit of "
            f"{cfg.max_frame_pixels} pixels per frame"
        )


def _encoded_video(source, cfg: VideoProcessorConfig) -> bytes | Path:
    """Raw bytes, a base64 data URL or a file path -> bytes or a checked path (size-limited)."""
    limit = cfg.max_input_bytes
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith("data:"):
        data = decode_data_url(source, limit, "video")
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"video file not found: {path}")
        if path.stat().st_size > limit:
            raise ValueError(f"video file {path} exceeds the limit of {limit} bytes")
        return path
    else:
        raise ValueError(f"unsupported video source of type {type(source).__name__}")
    if len(data) > limit:
        raise ValueError(f"video of {len(data)} bytes exceeds the limit of {limit} bytes")
    return data


def process_video(source, cfg: VideoProcessorConfig = VideoProcessorConfig()) -> ProcessedVision:
    """A video (any ``load_video`` source) -> patches for the vision tower, ``modality="video"``."""
    frames = load_video(source, cfg)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, C, H, W] uint8
    height, width = smart_resize(
        video.shape[-2], video.shape[-1], cfg.factor, cfg.min_pixels, cfg.max_pixels
    )
    pixels = normalize_frames(resize_frames(video, height, width))
    patches, grid_thw = patchify_video(pixels, cfg)
    digest = hashlib.blake2b(patches.numpy().tobytes(), digest_size=16)
    digest.update("x".join(map(str, grid_thw)).encode())
    return ProcessedVision(
        pixel_values=patches,
        grid_thw=grid_thw,
        content_hash=digest.hexdigest(),
        merge_size=cfg.merge_size,
        modality="video",
    )


def resize_frames(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, C, H, W] -> uint8 [T, C, height, width]: torchvision's ``resize`` on CPU for
    uint8 and BICUBIC (native uint8 antialiased bicubic; the input itself when the size holds)."""
    if tuple(video.shape[-2:]) == (height, width):
        return video
    return F.interpolate(
        video, size=[height, width], mode="bicubic", align_corners=False, antialias=True
    )


def normalize_frames(video: torch.Tensor) -> torch.Tensor:
    """uint8 [T, C, H, W] -> float32: transformers' fused rescale (1/255) + CLIP normalisation."""
    scale = 1.0 / (1 / 255)  # the mean and std are scaled up instead of the pixels down
    mean = (torch.tensor(CLIP_MEAN) * scale).view(-1, 1, 1)
    std = (torch.tensor(CLIP_STD) * scale).view(-1, 1, 1)
    return video.to(torch.float32).sub_(mean).div_(std)


def patchify_video(pixels: torch.Tensor, cfg: VideoProcessorConfig):
    """float32 [T, C, H, W] -> ([gt * gh * gw, C * Tp * P * P], (gt, gh, gw)).

    The frame count is padded to a multiple of Tp = ``temporal_patch_size`` with copies of the
    last frame; rows run over (gt, gh/m, gw/m, m, m) so each m x m merge window is contiguous.
    """
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if pad := -pixels.shape[0] % tp:
        pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
    num_frames, channels, height, width = pixels.shape
    gt, gh, gw = num_frames // tp, height // p, width // p
    x = pixels.view(gt, tp, channels, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [gt, gh/m, gw/m, m, m, C, Tp, P, P]
    return x.reshape(gt * gh * gw, channels * tp * p * p), (gt, gh, gw)
