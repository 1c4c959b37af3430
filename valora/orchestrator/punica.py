"""Punica policy (Chen et al., "Punica: Multi-Tenant LoRA Serving", MLSys 2024).

Always unmerged; every LoRA term through SGMV with fixed tiles (``atmm.baselines.punica_sgmv``);
requests admitted first come first served into one continuous batch.
"""

from __future__ import annotations

from valora.orchestrator.base import Policy


class PunicaPolicy(Policy):
    name = "punica"
    backend = "sgmv"
    can_merge = False
