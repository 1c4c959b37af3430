"""Where LoRA can attach in Qwen2-VL: the *targets* of the adapter pool.

A target is one kind of linear layer repeated over ``num_layers`` layers; stacked layers (q|k|v,
gate|up) are one target with several output slices, so one ATMM call covers them. PEFT names
each slice's module separately (``q_proj``, ``k_proj`` ...); ``peft_names`` maps them.

Language model: q|k|v, o, gate|up, down. Vision tower: qkv, proj, fc1, fc2 per block, and the
patch merger's two linears (``mlp.0``, ``mlp.2``).
"""

from __future__ import annotations

from dataclasses import dataclass

from valora.config import ModelConfig


@dataclass(frozen=True)
class TargetSpec:
    name: str  # "qkv_proj", ..., "visual.qkv", ..., "merger.0"
    tower: str  # "language" | "vision"
    num_layers: int
    in_features: int
    slice_sizes: tuple[int, ...]  # output widths of the stacked slices, in order
    peft_names: tuple[str, ...]  # PEFT module name (suffix) of each slice
    path_template: str  # our module path, "{layer}" filled in
    rows: str = ""  # which rows it sees: "language" | "vision" (patches) | "merger" (windows)

    @property
    def row_group(self) -> str:
        return self.rows or self.tower

    @property
    def out_features(self) -> int:
        return sum(self.slice_sizes)

    @property
    def slice_offsets(self) -> tuple[int, ...]:
        offsets = [0]
        for size in self.slice_sizes:
            offsets.append(offsets[-1] + size)
        return tuple(offsets)

    def module_path(self, layer: int) -> str:
        return self.path_template.format(layer=layer)


def model_targets(cfg: ModelConfig) -> tuple[TargetSpec, ...]:
    return language_targets(cfg) + vision_targets(cfg)


def language_targets(cfg: ModelConfig) -> tuple[TargetSpec, ...]:
    """q|k|v, o, gate|up, down of every decoder layer."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    lm = "model.layers.{layer}."
    return (
        TargetSpec(
            "qkv_proj",
            "language",
            layers,
            h,
            (q, kv, kv),
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            lm + "self_attn.qkv_proj",
        ),
        TargetSpec(
            "o_proj", "language", layers, q, (h,), ("self_attn.o_proj",), lm + "self_attn.o_proj"
        ),
        TargetSpec(
            "gate_up_proj",
            "language",
            layers,
            h,
            (inter, inter),
            ("mlp.gate_proj", "mlp.up_proj"),
            lm + "mlp.gate_up_proj",
        ),
        TargetSpec(
            "down_proj", "language", layers, inter, (h,), ("mlp.down_proj",), lm + "mlp.down_proj"
        ),
    )


def vision_targets(cfg: ModelConfig) -> tuple[TargetSpec, ...]:
    """qkv, proj, fc1, fc2 of every vision block, then the patch merger's two linears."""
    h, v = cfg.hidden_size, cfg.vision
    e, mlp, window = v.embed_dim, v.mlp_dim, v.embed_dim * v.spatial_merge_size**2
    block = "visual.blocks.{layer}."
    return (
        TargetSpec("visual.qkv", "vision", v.depth, e, (3 * e,), ("attn.qkv",), block + "attn.qkv"),
        TargetSpec("visual.proj", "vision", v.depth, e, (e,), ("attn.proj",), block + "attn.proj"),
        TargetSpec("visual.fc1", "vision", v.depth, e, (mlp,), ("mlp.fc1",), block + "mlp.fc1"),
        TargetSpec("visual.fc2", "vision", v.depth, mlp, (e,), ("mlp.fc2",), block + "mlp.fc2"),
        TargetSpec(
            "merger.0",
            "vision",
            1,
            window,
            (window,),
            ("merger.mlp.0",),
            "visual.merger.mlp.0",
            "merger",
        ),
        TargetSpec(
            "merger.2",
            "vision",
            1,
            window,
            (h,),
            ("merger.mlp.2",),
            "visual.merger.mlp.2",
            "merger",
        ),
    )
