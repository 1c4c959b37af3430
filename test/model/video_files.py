"""Small mp4 files made with PyAV for the tests (frames of distinct flat colours, or noise)."""

from __future__ import annotations

import base64
import io

import av
import numpy as np


def encode_mp4(frames: np.ndarray, rate: int = 4) -> bytes:
    """uint8 frames [T, H, W, 3] (H and W even) -> mp4 bytes (mpeg4, yuv420p)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return buf.getvalue()


def colour_frames(num_frames: int, height: int = 56, width: int = 84, seed: int = 0):
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (num_frames, 1, 1, 3), dtype=np.uint8)
    return np.broadcast_to(colours, (num_frames, height, width, 3)).copy()


def mp4_data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def chat(text: str) -> str:
    """One user turn in the chat template's shape, ready for the assistant's answer."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def noise_video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
