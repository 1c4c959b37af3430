"""Video preprocessing against transformers' Qwen2-VL processors; video sources and decoding;
fps sampling; limits and bad input; processor settings from checkpoint files and overrides."""

from __future__ import annotations

import base64
import io
import json

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from valora.multimodal import ImageProcessorConfig, smart_resize
from valora.processor_config import apply_overrides, load_processor_configs
from valora.video import (
    VideoProcessorConfig,
    load_video,
    process_video,
    resize_frames,
)
from valora.video_decode import probe_video, sample_frame_indices

try:  # transformers v5: the PIL implementation; v4: the class itself is PIL-based
    from transformers import Qwen2VLImageProcessorPil as HFImageProcessor
except ImportError:  # pragma: no cover
    from transformers import Qwen2VLImageProcessor as HFImageProcessor

SMALL = VideoProcessorConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 64)  # 56x84: no resize


def noise_frames(num_frames: int, height: int = 56, width: int = 84, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def encode_video(num_frames: int = 12, rate: int = 4, fmt: str = "mp4", size=(84, 56)) -> bytes:
    """Frames of distinct flat colours (frame i has grey level 20 * i), mpeg4 in ``fmt``."""
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            rgb = np.full((height, width, 3), (20 * i) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def all_frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def temporal_slots(pv) -> torch.Tensor:
    """[gt * gh * gw, C*Tp*P*P] -> [gt, gh * gw, C, Tp, P*P]."""
    gt, gh, gw = pv.grid_thw
    return pv.pixel_values.view(gt, gh * gw, 3, 2, -1)


# -- parity with transformers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames, height, width, pixels",
    [
        (4, 56, 84, {}),  # default bounds: scaled up
        (5, 56, 84, {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64}),  # no resize, odd T
        (3, 60, 90, {"min_pixels": 56 * 56, "max_pixels": 2000}),  # scaled down, odd T
        (2, 333, 251, {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 256}),  # odd sizes
    ],
)
def test_video_equals_transformers(num_frames, height, width, pixels):
    pytest.importorskip("torchvision")
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    frames = noise_frames(num_frames, height, width, seed=num_frames)
    extra = {"cap_pixels_per_frame": False}  # the reference behaviour; absent before v5.2x
    if not hasattr(Qwen2VLVideoProcessor, "cap_pixels_per_frame"):
        extra = {}
    hf = Qwen2VLVideoProcessor(**pixels)(
        videos=frames, return_tensors="pt", do_sample_frames=False, **extra
    )
    ours = process_video(frames, VideoProcessorConfig(**pixels))
    assert ours.grid_thw == tuple(hf["video_grid_thw"][0].tolist())
    torch.testing.assert_close(ours.pixel_values, hf["pixel_values_videos"], atol=1e-6, rtol=0)


def test_fps_sampling_equals_transformers():
    pytest.importorskip("torchvision")
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    hf = Qwen2VLVideoProcessor()
    for total, video_fps, fps in [
        (12, 4, 2),
        (12, 4, 1),
        (5, 4, 2),
        (301, 29.97, 2),
        (40, 30, 0.5),
    ]:
        metadata = VideoMetadata(total_num_frames=total, fps=video_fps)
        expected = hf.sample_frames(metadata, fps=fps).tolist()
        assert sample_frame_indices(total, video_fps, VideoProcessorConfig(fps=fps)) == expected


@pytest.mark.parametrize(
    "height, width, cfg", [(56, 84, SMALL), (280, 392, VideoProcessorConfig())]
)
def test_still_video_equals_transformers_image_processor(height, width, cfg):
    """No resize on either side: the image processor repeats a still frame over the temporal
    patch, which is what a 2-frame video of that frame is."""
    frame = noise_frames(1, height, width, seed=3)[0]
    hf = HFImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    expected = hf(images=Image.fromarray(frame), return_tensors="pt")
    ours = process_video(np.stack([frame, frame]), cfg)
    assert ours.grid_thw == (1, height // 14, width // 14)
    assert tuple(expected["image_grid_thw"][0].tolist()) == ours.grid_thw
    torch.testing.assert_close(ours.pixel_values, expected["pixel_values"], atol=1e-6, rtol=0)
    assert ours.modality == "video" and ours.num_tokens == height * width // 28**2


# -- preprocessing ------------------------------------------------------------------------------


def test_odd_frame_count_repeats_the_last_frame():
    frames = noise_frames(3)
    ours = temporal_slots(process_video(frames, SMALL))
    last = temporal_slots(process_video(frames[[2, 2]], SMALL))
    assert ours.shape[0] == 2
    torch.testing.assert_close(ours[1, :, :, 1], ours[1, :, :, 0], atol=0, rtol=0)
    torch.testing.assert_close(ours[1], last[0], atol=0, rtol=0)
    first = temporal_slots(process_video(frames[:2], SMALL))
    torch.testing.assert_close(ours[0], first[0], atol=0, rtol=0)


def gradient_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth frames: no bicubic overshoot, so uint8 and float resizing agree to one level."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x * 200 // width, y * 200 // height, (x + y) * 100 // (height + width)], -1)
    return np.stack([frame + 10 * t for t in range(num_frames)]).astype(np.uint8)


def test_resize_follows_smart_resize_and_interpolate():
    cfg = VideoProcessorConfig()
    height, width = smart_resize(60, 90, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    assert process_video(noise_frames(5, 60, 90), cfg).grid_thw == (3, height // 14, width // 14)
    for frames in (noise_frames(5, 60, 90), gradient_frames(5, 60, 90)):
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        resized = resize_frames(video, height, width)
        assert resized.dtype == torch.uint8 and resized.shape == (5, 3, height, width)
        expected = F.interpolate(
            video, size=[height, width], mode="bicubic", align_corners=False, antialias=True
        )
        assert torch.equal(resized, expected)
        assert resize_frames(video, 60, 90) is video  # the size holds: the input itself
    as_float = F.interpolate(
        video.float(), size=[height, width], mode="bicubic", align_corners=False, antialias=True
    )  # the uint8 kernel is fixed-point: within one level of the rounded float result
    assert (resized.float() - as_float.round().clamp(0, 255)).abs().max() <= 1


# -- sources -----------------------------------------------------------------------------------


def test_frame_sources_agree():
    frames = noise_frames(3)
    results = [
        process_video(frames, SMALL),
        process_video([Image.fromarray(f) for f in frames], SMALL),
        process_video(torch.from_numpy(frames), SMALL),
        process_video(np.concatenate([frames, frames], axis=2)[:, :, :84], SMALL),  # a view
    ]
    for other in results[1:]:
        assert other.grid_thw == results[0].grid_thw == (2, 4, 6)
        assert torch.equal(other.pixel_values, results[0].pixel_values)
        assert other.content_hash == results[0].content_hash


def test_file_sources_agree(tmp_path):
    data = encode_video()
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    results = [
        process_video(s, SMALL) for s in (data, bytearray(data), path, str(path), data_url(data))
    ]
    for other in results[1:]:
        assert other.grid_thw == results[0].grid_thw == (3, 4, 6)
        assert torch.equal(other.pixel_values, results[0].pixel_values)
        assert other.content_hash == results[0].content_hash


def test_pil_frames_are_converted_to_rgb():
    frames = noise_frames(2)
    gray = [Image.fromarray(f).convert("L") for f in frames]
    expected = np.stack([np.asarray(im.convert("RGB")) for im in gray])
    assert np.array_equal(load_video(gray), expected)


# -- decoding and fps sampling -----------------------------------------------------------------


def test_fps_sampling_indices():
    cfg = VideoProcessorConfig(fps=2.0)
    # 12 frames at 4 fps, 2 fps wanted: 12 / 4 * 2 = 6 frames, every second one
    assert sample_frame_indices(12, 4.0, cfg) == [0, 2, 4, 6, 8, 10]
    # 1 fps: 3 frames, raised to min_frames 4: arange(0, 12, 3)
    assert sample_frame_indices(12, 4.0, VideoProcessorConfig(fps=1.0)) == [0, 3, 6, 9]
    # 5 frames: at most 4 (floor to Tp); arange(0, 5, 1.25) truncated
    assert sample_frame_indices(5, 4.0, cfg) == [0, 1, 2, 3]
    assert sample_frame_indices(1, 4.0, cfg) == [0]  # below Tp: every frame


def test_decoded_file_keeps_the_sampled_frames():
    data = encode_video(num_frames=12, rate=4)
    decoded = load_video(data, VideoProcessorConfig(fps=2.0))
    assert decoded.shape == (6, 56, 84, 3)
    assert np.array_equal(decoded, all_frames(data)[[0, 2, 4, 6, 8, 10]])
    levels = decoded[:, 28, 42, 0].astype(int)  # lossy, but near grey level 20 * index
    assert np.abs(levels - 20 * np.array([0, 2, 4, 6, 8, 10])).max() <= 6


def test_probe_reads_metadata():
    meta = probe_video(encode_video(num_frames=12, rate=4), VideoProcessorConfig())
    assert (meta.total_num_frames, meta.fps, meta.width, meta.height) == (12, 4.0, 84, 56)
    assert meta.duration_s == pytest.approx(3.0)


def test_frame_count_missing_from_the_container():
    mkv = encode_video(fmt="matroska")  # no frame count, a duration: estimated
    assert probe_video(mkv, VideoProcessorConfig()).total_num_frames == 12
    assert load_video(mkv).shape == (6, 56, 84, 3)
    raw = encode_video(fmt="m4v")  # no count, no duration: counted by decoding
    assert probe_video(raw, VideoProcessorConfig()).total_num_frames == 0
    assert load_video(raw).shape[1:] == (56, 84, 3)
    with pytest.raises(ValueError, match="exceeds the limit"):
        load_video(raw, VideoProcessorConfig(max_duration_s=0.1))


def test_short_video_keeps_its_single_frame():
    decoded = load_video(encode_video(num_frames=1))
    assert decoded.shape == (1, 56, 84, 3)
    assert process_video(decoded, SMALL).grid_thw == (1, 4, 6)


# -- limits and bad input ------------------------------------------------------------------------


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise_frames(1)[0]).save(buf, format="PNG")
    return buf.getvalue()


BAD_BYTES = {
    "truncated-head": lambda: encode_video()[:1000],  # no moov atom
    "truncated-tail": lambda: encode_video()[:-600],
    "random": lambda: np.random.default_rng(0).bytes(5000),
    "png": png_bytes,  # FFmpeg reads a PNG as a one-frame video; not a video container here
    "text": lambda: b"hello world\n" * 50,
    "empty": lambda: b"",
}


@pytest.mark.parametrize("name", list(BAD_BYTES))
def test_undecodable_bytes_are_refused(name):
    with pytest.raises(ValueError, match="cannot decode video"):
        load_video(BAD_BYTES[name]())


def test_playlists_cannot_open_other_files(tmp_path, monkeypatch):
    """FFmpeg's concat demuxer would read clip.mp4 from the working directory."""
    (tmp_path / "clip.mp4").write_bytes(encode_video())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not a supported video container"):
        load_video(b"ffconcat version 1.0\nfile clip.mp4\n")


def test_file_limits_are_checked_before_decoding(tmp_path):
    data = encode_video(num_frames=12, rate=4)  # 3 s of 84x56
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"video of 3\.0 s exceeds the limit of 1\.0 s"):
        load_video(data, VideoProcessorConfig(max_duration_s=1.0))
    for source in (data, path, data_url(data)):
        with pytest.raises(ValueError, match="exceeds the limit of 100 bytes"):
            load_video(source, VideoProcessorConfig(max_input_bytes=100))
    with pytest.raises(ValueError, match="84x56 pixels exceed the limit of 1000 pixels"):
        load_video(data, VideoProcessorConfig(max_frame_pixels=1000))
    with pytest.raises(ValueError, match="6 frames, over the limit of 4"):
        load_video(data, VideoProcessorConfig(max_frames_per_video=4))


def test_frame_limits_apply_to_arrays():
    with pytest.raises(ValueError, match="pixels per frame"):
        load_video(noise_frames(2), VideoProcessorConfig(max_frame_pixels=1000))
    with pytest.raises(ValueError, match="3 frames exceeds the limit of 2 frames"):
        load_video(noise_frames(3), VideoProcessorConfig(max_frames_per_video=2))


@pytest.mark.parametrize(
    "source, message",
    [
        (noise_frames(2).astype(np.float32), "uint8"),
        (noise_frames(2)[0], "shape"),
        (np.zeros((2, 56, 84, 4), np.uint8), "shape"),
        (np.zeros((0, 56, 84, 3), np.uint8), "shape"),
        (torch.zeros(2, 56, 84, 3), "uint8"),
        ([], "at least one frame"),
        ([Image.new("RGB", (84, 56)), Image.new("RGB", (56, 84))], "one size"),
        ([np.zeros((56, 84, 3), np.uint8)], "list of PIL images"),
        (5, "unsupported video source"),
        ("/nonexistent/clip.mp4", "not found"),
        ("data:video/mp4,AAAA", "base64"),
        ("data:video/mp4;base64,@@@@", "not valid base64"),
    ],
)
def test_bad_input_is_refused(source, message):
    with pytest.raises(ValueError, match=message):
        load_video(source)


def test_audio_only_file_is_refused():
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ValueError, match="no video stream"):
        load_video(buf.getvalue())


# -- processor settings ------------------------------------------------------------------------

QWEN2_VL_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_processor_type": "Qwen2VLImageProcessor",
}


def write_json(path, data) -> None:
    path.write_text(json.dumps(data))


def test_defaults_without_files(tmp_path):
    assert load_processor_configs(None) == (ImageProcessorConfig(), VideoProcessorConfig())
    assert load_processor_configs(tmp_path) == (ImageProcessorConfig(), VideoProcessorConfig())


def test_file_precedence(tmp_path):
    write_json(tmp_path / "preprocessor_config.json", QWEN2_VL_PREPROCESSOR)
    image, video = load_processor_configs(tmp_path)
    assert (image.min_pixels, image.max_pixels) == (3136, 12845056)
    assert (video.min_pixels, video.max_pixels, video.fps) == (3136, 12845056, 2.0)

    video_file = {"size": {"shortest_edge": 4000, "longest_edge": 9000}, "fps": 1.0}
    write_json(tmp_path / "video_preprocessor_config.json", video_file)
    image, video = load_processor_configs(tmp_path)
    assert image.max_pixels == 12845056
    assert (video.min_pixels, video.max_pixels, video.fps) == (4000, 9000, 1.0)

    write_json(tmp_path / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})
    assert load_processor_configs(tmp_path)[1].max_pixels == 9000  # nothing nested: next file

    nested = {"image_processor": {"max_pixels": 5000}, "video_processor": {"max_frames": 64}}
    write_json(tmp_path / "processor_config.json", nested)
    image, video = load_processor_configs(tmp_path)
    assert (image.min_pixels, image.max_pixels) == (ImageProcessorConfig().min_pixels, 5000)
    assert (video.max_frames, video.max_pixels) == (64, VideoProcessorConfig().max_pixels)


def test_min_max_pixels_win_over_size(tmp_path):
    data = {"size": {"shortest_edge": 1000, "longest_edge": 2000}, "min_pixels": 1500}
    write_json(tmp_path / "preprocessor_config.json", data)
    image, video = load_processor_configs(tmp_path)
    assert (image.min_pixels, image.max_pixels) == (1500, 2000)
    assert (video.min_pixels, video.max_pixels) == (1500, 2000)


def test_overrides(tmp_path):
    write_json(tmp_path / "preprocessor_config.json", QWEN2_VL_PREPROCESSOR)
    overrides = {"max_pixels": 28 * 28 * 256, "fps": 1.0, "videos_kwargs": {"max_pixels": 50176}}
    image, video = load_processor_configs(tmp_path, overrides)
    assert (image.max_pixels, video.max_pixels, video.fps) == (28 * 28 * 256, 50176, 1.0)
    image2, video2 = apply_overrides(image, video, {"size": {"shortest_edge": 4000}})
    assert (image2.min_pixels, video2.min_pixels, video2.max_pixels) == (4000, 4000, 50176)
    assert apply_overrides(image, video, None) == (image, video)
    image3, _ = apply_overrides(image, video, {"images_kwargs": {"min_pixels": 5000}})
    assert image3.min_pixels == 5000


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_pixel": 1}, r"unknown mm_processor_kwargs key\(s\) \['max_pixel'\]; accepted"),
        ({"max_input_bytes": 1 << 40}, "max_input_bytes"),  # limits are not overridable
        ({"images_kwargs": {"fps": 1.0}}, "unknown images_kwargs"),
        ({"size": {"height": 10}}, "shortest_edge/longest_edge"),
        ({"min_pixels": 0}, "min_pixels must be a positive int"),
        ({"fps": -1.0}, "fps must be a positive float"),
        ({"fps": "2"}, "fps must be a positive float"),
        ({"fps": float("nan")}, "fps must be a positive float"),
        ({"min_pixels": 10_000_000}, "min_pixels 10000000 exceeds max_pixels"),
        ({"min_frames": 10, "max_frames": 8}, "min_frames 10 exceeds max_frames 8"),
        ({"min_pixels": 20_000_000, "max_pixels": 30_000_000}, "exceeds the source limit"),
    ],
)
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_processor_configs(None, overrides)


def test_unreadable_processor_file(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read processor config"):
        load_processor_configs(tmp_path)
