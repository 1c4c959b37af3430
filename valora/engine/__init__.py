"""The engine: its front door (``LLMEngine``), the one builder (``build_engine``), memory
planning, the weights plan (effective quantization), step totals and snapshots, and the
warm-up. Callers outside this package use ``LLMEngine``'s public methods only."""

from __future__ import annotations

from valora.config import EngineConfig
from valora.engine.builder import build_engine
from valora.engine.llm_engine import LLMEngine
from valora.engine.stats import EngineSnapshot

__all__ = ["EngineConfig", "EngineSnapshot", "LLMEngine", "build_engine"]
