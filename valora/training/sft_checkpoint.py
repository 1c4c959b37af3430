"""Adapter output, resumable checkpoints and the loss log of an SFT run.

A checkpoint ``<out>/checkpoint-<step>/`` holds the PEFT adapter files, ``optimizer.pt``,
``scheduler.pt``, ``rng_state.pt`` (Python and torch generators, CUDA's where present) and
``trainer_state.json`` (step, epoch, the config fields a resumed run must share, the dataset
size). It is written under a temporary name and renamed when complete, so an interrupted save
never looks like a checkpoint. Loading restores all of it, so a resumed run takes the same steps
(same batches, dropout masks and learning rates) as one never interrupted.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
LOSS_LOG = "loss_log.jsonl"
STATE_FILE = "trainer_state.json"


def save_peft_adapter(peft_model, out_dir: Path) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (no base weights; the README
    PEFT generates is dropped unless one was there before)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    had_readme = (out_dir / "README.md").exists()
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    if not had_readme and (out_dir / "README.md").exists():
        (out_dir / "README.md").unlink()
    return out_dir


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints under ``out_dir``, oldest step first."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and CHECKPOINT_RE.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.fullmatch(p.name)[1]))


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: Path, peft_model, optimizer, scheduler, step: int, epoch: int, meta: dict
) -> Path:
    """Write ``out_dir/checkpoint-<step>`` (see the module doc); ``meta`` goes into
    ``trainer_state.json``."""
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_peft_adapter(peft_model, tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng_state.pt")
    state = {"step": step, "epoch": epoch, **meta}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_checkpoint(path: Path, peft_model, optimizer, scheduler, meta: dict) -> int:
    """Restore adapter weights, optimizer, scheduler and RNG from ``path`` -> its step.
    ``ValueError`` if the checkpoint's ``meta`` (config, dataset size) differs from ``meta``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / STATE_FILE).read_text())
    diffs = _differences(state, meta)
    if diffs:
        raise ValueError(f"cannot resume from {path}; this run differs: {'; '.join(diffs)}")
    weights = load_file(str(path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, weights)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{path}: adapter tensors the model lacks: {result.unexpected_keys[:4]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng_state.pt", weights_only=True))
    return int(state["step"])


def _differences(saved: dict, meta: dict) -> list[str]:
    """``"name: saved -> now"`` for each meta entry (config fields one by one) that differs."""
    flat_saved = {**saved.get("config", {}), **{k: v for k, v in saved.items() if k != "config"}}
    flat_now = {**meta.get("config", {}), **{k: v for k, v in meta.items() if k != "config"}}
    return [
        f"{k}: {flat_saved.get(k)!r} -> {v!r}"
        for k, v in flat_now.items()
        if flat_saved.get(k) != v
    ]


class LossLog:
    """``<out>/loss_log.jsonl``: one ``{"step", "epoch", "loss", "lr", "grad_norm"}`` line per
    optimizer step (``epoch`` fractional: steps done / steps per epoch). Opening keeps the
    lines of steps ``<= keep_up_to`` (a resumed run's start) and drops the rest."""

    def __init__(self, out_dir: Path, keep_up_to: int = 0) -> None:
        self.path = out_dir / LOSS_LOG
        kept = []
        if keep_up_to and self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if line and json.loads(line)["step"] <= keep_up_to]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, epoch: float, loss: float, lr: float, grad_norm: float) -> None:
        entry = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
