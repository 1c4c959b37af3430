"""The optimizer-step loop of an SFT run: batch order, answer-token loss, gradient accumulation,
logging, checkpoints.

Batch order depends only on (seed, epoch): epoch ``e`` shuffles the examples with
``random.Random(seed * 1_000_003 + e)`` and cuts them into micro-batches of ``batch_size``; every
``grad_accum`` consecutive micro-batches make one optimizer step (an epoch's last step may take
fewer; ``step_batches``). A run resumed at step ``s`` therefore starts at the same micro-batch
without replaying anything. The loss of a step is the mean cross-entropy over all its answer
tokens (summed over its micro-batches, then divided by their total answer tokens), so
accumulation never re-weights examples by micro-batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from valora.training.sft_checkpoint import LossLog, save_checkpoint
from valora.training.sft_config import SFTConfig
from valora.training.sft_data import IGNORE_INDEX


@dataclass(frozen=True)
class StepPlan:
    """How many micro-batches and optimizer steps the run has."""

    num_examples: int
    batch_size: int
    grad_accum: int
    epochs: int

    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_per_epoch / self.grad_accum)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each micro-batch of ``epoch``, in order."""
    order = list(range(num_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, num_examples, batch_size)]


def answer_loss_sum(model, kwargs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the next-token predictions of every labelled token. Logits are
    computed only at the positions that predict a label in some row (a 1-D ``logits_to_keep``
    index tensor; the boolean-mask form is too recent in transformers): the prompts'
    [B, L, vocab] logits would cost memory and time for nothing."""
    predicts = (labels[:, 1:] != IGNORE_INDEX).any(0)  # [L - 1]: position p predicts p + 1
    keep = predicts.nonzero().squeeze(1)  # [K]
    out = model(**kwargs, use_cache=False, logits_to_keep=keep)
    logits = out.logits.float()  # [B, K, vocab]
    targets = labels[:, keep + 1]  # [B, K], -100 where a row has no label there
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def step_batches(plan: StepPlan, seed: int, start_step: int, end: int) -> list[list[list[int]]]:
    """Example indices of each micro-batch of each optimizer step ``start_step + 1 .. end``."""
    first_epoch = start_step // plan.steps_per_epoch
    steps = []
    for epoch in range(first_epoch, plan.epochs):
        batches = epoch_batches(plan.num_examples, plan.batch_size, seed, epoch)
        steps += [batches[i : i + plan.grad_accum] for i in range(0, len(batches), plan.grad_accum)]
    skipped = first_epoch * plan.steps_per_epoch
    return steps[start_step - skipped : end - skipped]


class SFTLoop:
    """Runs optimizer steps ``start_step + 1 .. total`` (or until ``cfg.stop_after_steps``)."""

    def __init__(self, model, optimizer, scheduler, records, collate_fn, cfg: SFTConfig, out_dir):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.records, self.collate_fn, self.cfg = records, collate_fn, cfg
        self.out_dir = Path(out_dir)
        self.plan = StepPlan(len(records), cfg.batch_size, cfg.grad_accum, cfg.epochs)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.checkpoints: list[Path] = []

    def run(self, start_step: int, log: LossLog, meta: dict) -> list[float]:
        """Train; returns the loss of each step taken. Saves ``checkpoint-<step>`` every
        ``save_every`` steps and where ``stop_after_steps`` stops the run."""
        cfg, plan = self.cfg, self.plan
        end = plan.total_steps
        if cfg.stop_after_steps:
            end = min(end, cfg.stop_after_steps)
        losses = []
        bar = tqdm(total=plan.total_steps, initial=start_step, desc="sft", disable=not cfg.progress)
        self.model.train()
        step = start_step
        for group in self._groups(start_step, end):
            lr = self.scheduler.get_last_lr()[0]
            loss, grad_norm = self._optimizer_step(group)
            step += 1
            losses.append(loss)
            log.write(step, step / plan.steps_per_epoch, loss, lr, grad_norm)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            stopped_early = step == end and end < plan.total_steps
            if (cfg.save_every and step % cfg.save_every == 0) or stopped_early:
                self._checkpoint(step, meta)
        bar.close()
        return losses

    def _checkpoint(self, step: int, meta: dict) -> None:
        epoch = (step - 1) // self.plan.steps_per_epoch  # the epoch the step belongs to
        path = save_checkpoint(
            self.out_dir, self.model, self.optimizer, self.scheduler, step, epoch, meta
        )
        self.checkpoints.append(path)

    def _groups(self, start_step: int, end: int) -> Iterator[list[tuple[dict, torch.Tensor]]]:
        """The collated micro-batches of each optimizer step ``start_step + 1 .. end``, from one
        DataLoader (its workers start once per run)."""
        steps = step_batches(self.plan, self.cfg.seed, start_step, end)
        loader = DataLoader(
            self.records,
            batch_sampler=[batch for step in steps for batch in step],
            collate_fn=self.collate_fn,
            num_workers=self.cfg.num_workers,
            # PyAV (video decoding) and OpenMP deadlock in forked children
            multiprocessing_context="spawn" if self.cfg.num_workers else None,
            generator=torch.Generator(),  # else the iterator draws from the global RNG
        )
        batches = iter(loader)
        for step in steps:
            yield [next(batches) for _ in step]

    def _optimizer_step(self, group: list[tuple[dict, torch.Tensor]]) -> tuple[float, float]:
        """Forward/backward each micro-batch, clip, step -> (mean answer loss, grad norm)."""
        num_targets = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in group)
        total = 0.0
        for kwargs, labels in group:
            kwargs = {k: v.to(self.device) for k, v in kwargs.items()}
            loss_sum = answer_loss_sum(self.model, kwargs, labels.to(self.device))
            (loss_sum / num_targets).backward()
            total += loss_sum.item()
        max_norm = self.cfg.max_grad_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / num_targets, grad_norm
