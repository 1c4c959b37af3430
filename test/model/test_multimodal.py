"""Image preprocessing against transformers' Qwen2-VL image processor; image sources; bad input;
placeholder expansion; M-RoPE positions of decode tokens."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from prompts import noise_image

from valora.mrope import decode_positions, mrope_positions
from valora.multimodal import (
    ImageProcessorConfig,
    expand_image_placeholders,
    process_image,
    smart_resize,
)

try:  # transformers v5: the PIL implementation; v4: the class itself is PIL-based
    from transformers import Qwen2VLImageProcessorPil as HFImageProcessor
except ImportError:  # pragma: no cover
    from transformers import Qwen2VLImageProcessor as HFImageProcessor

IMAGE_PAD = 151655


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def rgba_image() -> Image.Image:
    rgba = np.random.default_rng(5).integers(0, 256, (70, 90, 4), dtype=np.uint8)
    return Image.fromarray(rgba, mode="RGBA")


def hf_process(image: Image.Image, **size):
    processor = HFImageProcessor(**size)
    out = processor(images=[image], return_tensors="pt")
    return out["pixel_values"], tuple(out["image_grid_thw"][0].tolist())


@pytest.mark.parametrize(
    "image",
    [
        noise_image(20, 30, 0),  # below min_pixels: scaled up
        noise_image(333, 251, 1),  # odd sizes, rounded to multiples of 28
        noise_image(1500, 1100, 2),  # above max_pixels: scaled down
        noise_image(1000, 60, 3),  # wide
        noise_image(64, 64, 4).convert("L"),  # grayscale
        rgba_image(),  # transparency composited on white
    ],
    ids=["tiny", "odd", "large", "wide", "gray", "rgba"],
)
def test_pixels_and_grid_equal_transformers(image):
    if image.mode == "RGBA" and not transformers_composites_alpha():
        pytest.skip("this transformers drops alpha instead of compositing it on white")
    ours = process_image(image)
    ref_pixels, ref_grid = hf_process(image)
    assert ours.grid_thw == ref_grid
    assert ours.pixel_values.dtype == torch.float32
    assert torch.equal(ours.pixel_values, ref_pixels)
    assert ours.num_tokens == ref_pixels.shape[0] // 4


def transformers_composites_alpha() -> bool:
    """Recent transformers composite transparency on white, as qwen-vl-utils does; older
    releases dropped the alpha channel (a clear pixel then reads as black)."""
    pixels, _ = hf_process(Image.new("RGBA", (56, 56), (0, 0, 0, 0)))
    return bool(pixels.min() > 1.5)  # white after CLIP normalisation is about 1.9-2.1


def test_transparency_is_composited_on_white():
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)
    rgba[:, :28] = (255, 0, 0, 255)  # opaque red left half, transparent right half
    pixels = process_image(Image.fromarray(rgba, mode="RGBA")).pixel_values
    # patch order: merge window (0, 0) starts at the left edge, window (0, 1) at x = 28
    channel_mean = pixels.view(-1, 3, 2 * 14 * 14).mean(-1)
    white = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    assert torch.allclose(channel_mean[4], white, atol=1e-5)  # first patch of the right window
    assert channel_mean[0, 0] > 1.5 and channel_mean[0, 1] < 0  # red


def test_custom_pixel_bounds_equal_transformers():
    image = noise_image(640, 480, 7)
    cfg = ImageProcessorConfig(min_pixels=128 * 28 * 28, max_pixels=256 * 28 * 28)
    ours = process_image(image, cfg)
    ref_pixels, ref_grid = hf_process(
        image, size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    )
    assert ours.grid_thw == ref_grid
    assert torch.equal(ours.pixel_values, ref_pixels)


def test_smart_resize_examples():
    assert smart_resize(448, 448, 28, 3136, 28 * 28 * 1280) == (448, 448)
    h, w = smart_resize(3000, 4000, 28, 3136, 28 * 28 * 1280)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 28 * 28 * 1280
    assert smart_resize(10, 10, 28, 3136, 28 * 28 * 1280) == (56, 56)


def test_every_source_kind_gives_the_same_image(tmp_path):
    image = noise_image(90, 70, 9)
    data = png_bytes(image)
    path = tmp_path / "img.png"
    path.write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    results = [process_image(src) for src in (image, data, url, str(path), path)]
    for r in results[1:]:
        assert r.content_hash == results[0].content_hash
        assert torch.equal(r.pixel_values, results[0].pixel_values)


def test_content_hash_tells_images_apart():
    a, b = noise_image(90, 70, 1), noise_image(90, 70, 2)
    assert process_image(a).content_hash != process_image(b).content_hash


@pytest.mark.parametrize(
    "source, message",
    [
        (b"definitely not an image", "cannot decode image"),
        ("data:image/png;base64,!!notbase64!!", "not valid base64"),
        ("data:image/png,rawdata", "base64"),
        ("/nonexistent/image.png", "not found"),
        (12345, "unsupported image source"),
        (noise_image(2000, 5, 0), "aspect ratio"),
    ],
)
def test_bad_images_raise_value_error(source, message):
    with pytest.raises(ValueError, match=message):
        process_image(source)


def test_oversized_images_are_refused():
    image = noise_image(300, 300, 0)
    with pytest.raises(ValueError, match="exceeds the limit"):
        process_image(image, ImageProcessorConfig(max_input_pixels=200 * 200))
    with pytest.raises(ValueError, match="exceeds the limit"):
        process_image(png_bytes(image), ImageProcessorConfig(max_input_bytes=1000))


def test_truncated_png_is_refused():
    data = png_bytes(noise_image(100, 100, 0))
    with pytest.raises(ValueError, match="cannot decode image"):
        process_image(data[: len(data) // 2])


def test_placeholder_expansion():
    a, b = process_image(noise_image(56, 56, 0)), process_image(noise_image(112, 56, 1))
    ids = [1, IMAGE_PAD, 2, IMAGE_PAD, 3]
    out = expand_image_placeholders(ids, [a, b], IMAGE_PAD)
    assert out == [1] + [IMAGE_PAD] * a.num_tokens + [2] + [IMAGE_PAD] * b.num_tokens + [3]
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders but 1 images"):
        expand_image_placeholders(ids, [a], IMAGE_PAD)


def test_mrope_positions_layout_and_decode_continuation():
    # text(2) + image grid (1, 4, 6) -> 2x3 merged tokens + text(3)
    ids = [5, 6] + [IMAGE_PAD] * 6 + [7, 8, 9]
    positions, delta = mrope_positions(ids, [(1, 4, 6)], IMAGE_PAD, 2)
    expected = np.array(
        [
            [0, 1, 2, 2, 2, 2, 2, 2, 5, 6, 7],
            [0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 7],
            [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 7],
        ]
    )
    assert np.array_equal(positions, expected)
    assert delta == 8 - len(ids)
    assert np.array_equal(decode_positions(len(ids), 2, delta), np.array([[8, 9]] * 3))


def test_mrope_positions_reject_mismatched_images():
    with pytest.raises(ValueError, match="consecutive"):
        mrope_positions([1, IMAGE_PAD, 2], [(1, 4, 4)], IMAGE_PAD, 2)
    with pytest.raises(ValueError, match="more image/video pad tokens"):
        mrope_positions([IMAGE_PAD] * 4 + [IMAGE_PAD], [(1, 4, 4)], IMAGE_PAD, 2)
    with pytest.raises(ValueError, match="fewer"):
        mrope_positions([1, 2], [(1, 4, 4)], IMAGE_PAD, 2)
