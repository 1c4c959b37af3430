"""S-LoRA policy (Sheng et al., "S-LoRA: Serving Thousands of Concurrent LoRA Adapters",
MLSys 2024).

Always unmerged, MBGMV/MBGMM kernels reading adapters by per-token pool index
(``atmm.baselines.slora_mbgmv``), FCFS, and S-LoRA's admission rule: a waiting request joins only
if, with every running request's worst case (prompt plus ``max_tokens``) reserved, its own worst
case still fits in the KV cache, so admitted requests are never preempted for lack of memory.
"""

from __future__ import annotations

from collections.abc import Iterable

from valora.orchestrator.base import Policy
from valora.request import Request


def worst_case_tokens(request: Request) -> int:
    return request.num_prompt_tokens + request.sampling_params.max_tokens


class SLoRAPolicy(Policy):
    name = "slora"
    backend = "mbgmv"
    can_merge = False

    def __init__(self) -> None:
        self.capacity = 0

    def bind(self, kv_capacity_tokens: int, overlay_merges: bool = False) -> None:
        self.capacity = kv_capacity_tokens

    def order(self, waiting: Iterable[Request], running: list[Request]) -> list[Request]:
        """The FCFS prefix of the waiting queue whose worst cases fit beside the running ones."""
        reserved = sum(worst_case_tokens(r) for r in running)
        admitted = []
        for request in waiting:
            need = worst_case_tokens(request)
            if reserved + need > self.capacity and (admitted or running):
                break  # FCFS: no overtaking; an empty engine always takes the head
            reserved += need
            admitted.append(request)
        return admitted
