"""The soak's set-up: PEFT adapters made with transformers + PEFT on the tiny setting, a
``valora-serve`` subprocess, and the provenance its result file records."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def make_peft_adapters(root: Path, names: list[str]) -> None:
    """One random rank-8 PEFT adapter per name under ``root`` (all seven LM linears)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    import exp_suite

    config = Qwen2VLConfig(**json.loads(json.dumps(dict(exp_suite.MODEL_SETTINGS["tiny"]))))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for i, name in enumerate(names):
        torch.manual_seed(i)
        base = Qwen2VLForConditionalGeneration(config)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
        get_peft_model(base, lora).save_pretrained(root / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(lora_root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "valora.server.cli",
        "--model-setting",
        "tiny",
        "--device",
        "cpu",
        "--num-token",
        "8192",
        "--num-adapter",
        "4",
        "--lora-root",
        str(lora_root),
        "--max-cpu-loras",
        "2",
        "--max-loras",
        "2",
        "--max-model-len",
        "256",
        "--lora-backend",
        "torch",
        "--port",
        str(port),
    ]
    return subprocess.Popen(command), f"http://127.0.0.1:{port}"


def wait_healthy(url: str, server: subprocess.Popen | None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not become healthy")


def provenance(argv: list[str]) -> dict:
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    return {
        "command": " ".join(["python", *argv]),
        "commit": commit,
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
