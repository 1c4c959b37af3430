"""Calibration statistics of the language model's linears, from one forward pass of the model.

For every LM linear (``convert.lm_linears``) and its inputs x_t [K] over all calibration tokens:

    hessians[path]  sum_t x_t x_t^T  [K, K] fp32   (GPTQ's Hessian; AWQ's output-error metric)
    abs_sums[path]  sum_t |x_t|      [K] fp32      (AWQ's activation magnitude, see ``mean_abs``)

The samples are chat-templated text; ``builtin`` is a few short prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from valora.layers.attention import AttentionMetadata
from valora.quant.convert import lm_linears
from valora.tokenizer import Tokenizer

BUILTIN_CALIB = [
    "Describe the weather in a large city during a rainy afternoon.",
    "Explain how a compiler turns source code into machine instructions.",
    "List three ways to reduce memory use in a neural network server.",
    "Write a short story about a robot who learns to paint.",
    "What are the main differences between cats and dogs as pets?",
    "Summarize the rules of chess for a beginner.",
]


def load_samples(calib: str) -> list[str]:
    """``builtin``, or a text file with one sample a line (blank lines skipped)."""
    if calib == "builtin":
        return list(BUILTIN_CALIB)
    return [line for line in Path(calib).read_text().splitlines() if line.strip()]


@dataclass
class InputStats:
    """Per LM linear (module path): the sums above and the number of tokens they cover."""

    hessians: dict[str, torch.Tensor] = field(default_factory=dict)
    abs_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    num_tokens: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, x: torch.Tensor) -> None:
        """x [T, K] fp32: one batch of the linear's inputs."""
        self.hessians[path] = self.hessians.get(path, 0) + x.t() @ x
        self.abs_sums[path] = self.abs_sums.get(path, 0) + x.abs().sum(dim=0)
        self.num_tokens[path] = self.num_tokens.get(path, 0) + x.shape[0]

    def mean_abs(self, path: str) -> torch.Tensor:
        """[K] mean |x| per input channel."""
        return self.abs_sums[path] / max(self.num_tokens[path], 1)


def collect_input_stats(model, tokenizer: Tokenizer, samples: list[str]) -> InputStats:
    """``InputStats`` of every LM linear over the samples, each sample one forward pass."""
    stats = InputStats()
    hooks = []
    for path, module in lm_linears(model):

        def hook(mod, args, path=path):
            stats.add(path, args[0].reshape(-1, args[0].shape[-1]).float())

        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for text in samples:
                chat = [{"role": "user", "content": text}]
                ids = tokenizer.encode(tokenizer.apply_chat_template(chat))
                t = len(ids)
                positions = torch.arange(t).expand(3, t)  # text only: the 3 M-RoPE rows agree
                model(torch.tensor(ids), positions, AttentionMetadata.for_lengths([t]))
    finally:
        for h in hooks:
            h.remove()
    return stats
