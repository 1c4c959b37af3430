"""Image and video processor settings: a checkpoint's processor files, then overrides.

Files are read with transformers' precedence: for images ``processor_config.json``'s nested
``"image_processor"``, else ``preprocessor_config.json``; for videos ``processor_config.json``'s
nested ``"video_processor"``, else ``video_preprocessor_config.json``, else
``preprocessor_config.json`` (so a Qwen2-VL checkpoint with only the image file gives its videos
the image ``min_pixels``/``max_pixels``, as transformers does). As in the processors' ``__init__``,
``min_pixels``/``max_pixels`` win over ``size`` (``shortest_edge``/``longest_edge``).

Overrides are vLLM's ``mm_processor_kwargs``: ``min_pixels``, ``max_pixels``, ``size``, ``fps``,
``min_frames``, ``max_frames`` apply to each config that has the field, and the nested
``images_kwargs`` / ``videos_kwargs`` dicts to one config only (on top). Limits on the inputs
(bytes, duration, source pixels) are never overridable.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from valora.multimodal import ImageProcessorConfig
from valora.video import VideoProcessorConfig

_ARCH_KEYS = ("patch_size", "temporal_patch_size", "merge_size")
_FRAME_KEYS = ("fps", "min_frames", "max_frames")
_PIXEL_KEYS = ("min_pixels", "max_pixels", "size")
_NESTED = {"images_kwargs": _PIXEL_KEYS, "videos_kwargs": _PIXEL_KEYS + _FRAME_KEYS}
OVERRIDE_KEYS = _PIXEL_KEYS + _FRAME_KEYS + tuple(_NESTED)


def load_processor_configs(
    checkpoint_dir: str | Path | None, overrides: dict | None = None
) -> tuple[ImageProcessorConfig, VideoProcessorConfig]:
    """The checkpoint's image and video processor settings (defaults without files), then
    ``overrides``. Raises ``ValueError`` for unreadable files, unknown keys or bad values."""
    image_dict, video_dict = read_processor_dicts(checkpoint_dir)
    image_cfg = _replace(ImageProcessorConfig(), _file_values(image_dict, _ARCH_KEYS))
    video_cfg = _replace(VideoProcessorConfig(), _file_values(video_dict, _ARCH_KEYS + _FRAME_KEYS))
    return apply_overrides(image_cfg, video_cfg, overrides)


def read_processor_dicts(checkpoint_dir: str | Path | None) -> tuple[dict, dict]:
    """(image processor dict, video processor dict) with transformers' file precedence."""
    if checkpoint_dir is None:
        return {}, {}
    root = Path(checkpoint_dir)
    nested = _read_json(root / "processor_config.json") or {}
    legacy = _read_json(root / "preprocessor_config.json")
    image = nested["image_processor"] if "image_processor" in nested else legacy
    video = nested.get("video_processor")
    if video is None:
        video = _read_json(root / "video_preprocessor_config.json")
        video = legacy if video is None else video
    return image or {}, video or {}


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read processor config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"processor config {path} must hold a JSON object")
    return data


def _file_values(data: dict, keys: tuple[str, ...]) -> dict:
    values = _pixel_values(data, "size")
    values.update({k: data[k] for k in keys if data.get(k) is not None})
    return values


def _pixel_values(data: dict, where: str, strict: bool = False) -> dict:
    """``size`` and ``min_pixels``/``max_pixels`` -> min/max_pixels, the explicit keys winning
    (``size`` may also say min_pixels/max_pixels, as older checkpoints do, unless ``strict``)."""
    size = data.get("size")
    size = {} if size is None else size
    edges = {"shortest_edge": "min_pixels", "longest_edge": "max_pixels"}
    if not strict:
        edges.update(min_pixels="min_pixels", max_pixels="max_pixels")
    if not isinstance(size, dict) or (strict and set(size) - set(edges)):
        raise ValueError(f"{where} must be a dict with shortest_edge/longest_edge, got {size!r}")
    values = {field: size[name] for name, field in edges.items() if size.get(name) is not None}
    values.update({k: data[k] for k in ("min_pixels", "max_pixels") if data.get(k) is not None})
    return values


def apply_overrides(
    image_cfg: ImageProcessorConfig, video_cfg: VideoProcessorConfig, overrides: dict | None
) -> tuple[ImageProcessorConfig, VideoProcessorConfig]:
    """``image_cfg`` and ``video_cfg`` with vLLM-style ``mm_processor_kwargs`` applied."""
    if not overrides:
        return image_cfg, video_cfg
    common = _override_values(overrides, OVERRIDE_KEYS, "mm_processor_kwargs")
    for name in _NESTED:
        common.pop(name, None)
    nested = {
        name: _override_values(overrides.get(name) or {}, keys, name)
        for name, keys in _NESTED.items()
    }
    image_cfg = _replace(image_cfg, {**common, **nested["images_kwargs"]})
    video_cfg = _replace(video_cfg, {**common, **nested["videos_kwargs"]})
    return image_cfg, video_cfg


def _override_values(overrides, accepted: tuple[str, ...], where: str) -> dict:
    if not isinstance(overrides, dict):
        raise ValueError(f"{where} must be a dict, got {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; accepted: {', '.join(accepted)}")
    values = {k: v for k, v in overrides.items() if v is not None and k != "size"}
    values.update(_pixel_values(overrides, f"{where}.size", strict=True))
    return values


def _replace(cfg, values: dict):
    """``cfg`` with the ``values`` for its own fields (others ignored), checked."""
    names = {f.name for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in values.items() if k in names})
    validate_config(cfg)
    return cfg


def validate_config(cfg: ImageProcessorConfig | VideoProcessorConfig) -> None:
    """Every field a finite positive number of its default's type; min <= max; upscaling bounded."""
    kind = "video" if isinstance(cfg, VideoProcessorConfig) else "image"
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        want = float if isinstance(field.default, float) else int
        ok = isinstance(value, (int, float) if want is float else int)
        if isinstance(value, bool) or not ok or not 0 < value < math.inf:
            raise ValueError(
                f"{kind} {field.name} must be a positive {want.__name__}, got {value!r}"
            )
    if cfg.min_pixels > cfg.max_pixels:
        raise ValueError(f"{kind} min_pixels {cfg.min_pixels} exceeds max_pixels {cfg.max_pixels}")
    source_limit = cfg.max_frame_pixels if kind == "video" else cfg.max_input_pixels
    if cfg.min_pixels > source_limit:  # smart_resize upscales to min_pixels: bound the output
        raise ValueError(
            f"{kind} min_pixels {cfg.min_pixels} exceeds the source limit {source_limit}"
        )
    if kind == "video" and cfg.min_frames > cfg.max_frames:
        raise ValueError(f"video min_frames {cfg.min_frames} exceeds max_frames {cfg.max_frames}")
