"""Orchestration policies by name (``--scheduler``): what the engine merges, admits and holds.

``fcfs`` (unmerged ATMM, first come first served), ``valora`` (ours: cost-model mode choice),
``slora``, ``punica`` and ``dlora`` (the baseline systems' policies and kernels). Each policy
imports no torch.
"""

from __future__ import annotations

from valora.orchestrator.base import Plan, Policy, StepRecord
from valora.orchestrator.dlora import DLoRAPolicy
from valora.orchestrator.punica import PunicaPolicy
from valora.orchestrator.slora import SLoRAPolicy
from valora.orchestrator.valora import VaLoRAPolicy

POLICIES: dict[str, type[Policy]] = {
    "fcfs": Policy,
    "valora": VaLoRAPolicy,
    "slora": SLoRAPolicy,
    "punica": PunicaPolicy,
    "dlora": DLoRAPolicy,
}

__all__ = ["POLICIES", "Plan", "Policy", "StepRecord", "make_policy"]


def make_policy(name: str, **options) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](**options)
