"""Running totals of what the engine's steps did: per LoRA mode, the steps, their seconds, their
tokens; the merged-adapter switches and their seconds.

They are what a policy comparison needs beside the request latencies (how often each mode ran,
what a step cost, what switching cost). Plain counters, only ever increased (the engine thread
writes them; readers, the metrics endpoint, take a snapshot and diff two snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from valora.orchestrator import StepRecord

MODES = ("none", "unmerged", "merged", "mixture")


@dataclass
class EngineStats:
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    step_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODES, 0.0))
    step_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    switches: int = 0
    switch_seconds: float = 0.0

    def record_step(self, record: StepRecord) -> None:
        self.steps[record.mode] += 1
        self.step_seconds[record.mode] += record.seconds
        self.step_tokens[record.mode] += record.num_tokens

    def record_switch(self, seconds: float) -> None:
        self.switches += 1
        self.switch_seconds += seconds

    def snapshot(self) -> dict:
        return {"steps": dict(self.steps), "step_seconds": dict(self.step_seconds),
                "step_tokens": dict(self.step_tokens), "switches": self.switches,
                "switch_seconds": self.switch_seconds}  # fmt: skip
