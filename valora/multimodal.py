"""Image input: decoding, Qwen2-VL preprocessing, placeholder expansion and M-RoPE positions.

``process_image`` computes exactly what transformers' Qwen2-VL image processor (PIL backend)
computes: RGB conversion (transparency composited on white), ``smart_resize`` to multiples of
patch*merge (28) within [min_pixels, max_pixels], bicubic resize, rescale by 1/255 (in float64,
stored as float32), CLIP normalisation in float32, and patch flattening with each 2x2 merge window
contiguous and the still frame repeated ``temporal_patch_size`` times.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageProcessorConfig:
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280  # at most 1280 image tokens per image
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    max_input_pixels: int = 64_000_000  # decoded images above this are refused
    max_input_bytes: int = 32 << 20  # encoded image bytes above this are refused

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class ProcessedVision:
    """One image or video ready for the vision tower (a video is t > 1 temporal patches)."""

    pixel_values: torch.Tensor  # [t * h * w, C * T * P * P] float32
    grid_thw: tuple[int, int, int]  # in patches
    content_hash: str  # of the pixels the model sees (prefix-cache key)
    merge_size: int = 2
    modality: str = "image"  # "image" -> <|image_pad|> tokens, "video" -> <|video_pad|>

    @property
    def num_tokens(self) -> int:
        """<|image_pad|> tokens this image expands to: t * h * w / merge^2."""
        t, h, w = self.grid_thw
        return t * h * w // self.merge_size**2


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """Closest (h, w), multiples of ``factor``, with aspect ratio kept and h*w within bounds."""
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side: {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio must be below 200, got {width}x{height}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def load_image(source, cfg: ImageProcessorConfig = ImageProcessorConfig()) -> Image.Image:
    """A PIL image, raw bytes, a ``data:image/...;base64,`` URL or a local path -> RGB image.

    Raises ``ValueError`` for anything that does not decode to an image within the size limits.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        data = _image_bytes(source, cfg)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))  # reads the header only
                _check_pixels(image, cfg)  # before a single pixel is decoded
                image.load()
        except (
            OSError,
            SyntaxError,
            Image.DecompressionBombWarning,
            Image.DecompressionBombError,
        ) as exc:
            raise ValueError(f"cannot decode image: {exc}") from exc
    _check_pixels(image, cfg)
    return _to_rgb(image)


def _check_pixels(image: Image.Image, cfg: ImageProcessorConfig) -> None:
    if image.width * image.height > cfg.max_input_pixels:
        raise ValueError(
            f"image of {image.width}x{image.height} pixels exceeds the limit of "
            f"{cfg.max_input_pixels} pixels"
        )


def decode_data_url(url: str, limit: int, kind: str) -> bytes:
    """A ``data:<kind>/<type>;base64,<data>`` URL -> its bytes; refused (ValueError) before
    decoding when the payload would exceed ``limit`` bytes."""
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ValueError(f"{kind} data URL must look like data:{kind}/<type>;base64,<data>")
    if len(payload) * 3 // 4 > limit:
        raise ValueError(f"{kind} data URL exceeds the limit of {limit} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{kind} data URL is not valid base64: {exc}") from exc


def _image_bytes(source, cfg: ImageProcessorConfig) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith("data:"):
        data = decode_data_url(source, cfg.max_input_bytes, "image")
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"image file not found: {path}")
        if path.stat().st_size > cfg.max_input_bytes:
            raise ValueError(f"image file {path} exceeds {cfg.max_input_bytes} bytes")
        data = path.read_bytes()
    else:
        raise ValueError(f"unsupported image source of type {type(source).__name__}")
    if len(data) > cfg.max_input_bytes:
        raise ValueError(f"image of {len(data)} bytes exceeds the limit of {cfg.max_input_bytes}")
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def process_image(source, cfg: ImageProcessorConfig = ImageProcessorConfig()) -> ProcessedVision:
    image = load_image(source, cfg)
    height, width = smart_resize(
        image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels
    )
    resized = np.asarray(image.resize((width, height), resample=Image.Resampling.BICUBIC))
    pixels = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)  # [H, W, C]
    pixels = (pixels - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    patches, grid_h, grid_w = _patchify(pixels.transpose(2, 0, 1), cfg)
    digest = hashlib.blake2b(patches.tobytes(), digest_size=16)
    digest.update(f"{grid_h}x{grid_w}".encode())
    return ProcessedVision(
        pixel_values=torch.from_numpy(patches),
        grid_thw=(1, grid_h, grid_w),
        content_hash=digest.hexdigest(),
        merge_size=cfg.merge_size,
    )


def _patchify(image: np.ndarray, cfg: ImageProcessorConfig):
    """[C, H, W] -> ([gh * gw, C * T * P * P], gh, gw), merge windows contiguous."""
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    channels, height, width = image.shape
    gh, gw = height // p, width // p
    x = image.reshape(channels, gh // m, m, p, gw // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, P, P]
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))  # still frame, T times
    return np.ascontiguousarray(x.reshape(gh * gw, channels * t * p * p)), gh, gw


def expand_image_placeholders(
    token_ids: list[int], images: list[ProcessedVision], image_token_id: int
) -> list[int]:
    """Replace the i-th single ``<|image_pad|>`` with ``images[i].num_tokens`` copies."""
    return expand_vision_placeholders(token_ids, images, [], image_token_id, -1)[0]


def expand_vision_placeholders(
    token_ids: list[int],
    images: list[ProcessedVision],
    videos: list[ProcessedVision],
    image_token_id: int,
    video_token_id: int,
) -> tuple[list[int], list[ProcessedVision]]:
    """Replace the i-th single ``<|image_pad|>`` with ``images[i].num_tokens`` copies and the j-th
    ``<|video_pad|>`` with ``videos[j].num_tokens`` copies -> (expanded ids, the images and
    videos in prompt order)."""
    _check_placeholder_count(token_ids, image_token_id, len(images), "<|image_pad|>", "images")
    _check_placeholder_count(token_ids, video_token_id, len(videos), "<|video_pad|>", "videos")
    pending = {image_token_id: iter(images), video_token_id: iter(videos)}
    expanded: list[int] = []
    ordered: list[ProcessedVision] = []
    for token in token_ids:
        if token in pending:
            item = next(pending[token])
            ordered.append(item)
            expanded.extend([token] * item.num_tokens)
        else:
            expanded.append(token)
    return expanded, ordered


def _check_placeholder_count(token_ids, pad: int, count: int, pad_name: str, what: str) -> None:
    num_pads = sum(1 for t in token_ids if t == pad)
    if num_pads != count:
        raise ValueError(f"the prompt has {num_pads} {pad_name} placeholders but {count} {what}")
