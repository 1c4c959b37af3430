"""The W4A16 / W8A16 engine (tiny config, CPU, fp32) against transformers' ``generate`` on the
dequantized weights: the same greedy tokens for text and image prompts; LoRA on top."""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_greedy, make_hf_model, save_checkpoint
from prompts import CONVERSATIONS, conversation_images
from quant_lora import partial_adapter, quantized_manager, write_peft

from valora.llm import LLM
from valora.quant.convert import PIECES_OF, lm_linears
from valora.quant.linear import QuantLinear
from valora.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def load_dequantized_into(hf, engine_model) -> None:
    """Copy our quantized LM linears, dequantized, into transformers' model."""
    with torch.no_grad():
        for path, module in lm_linears(engine_model):
            assert isinstance(module, QuantLinear)
            parent, _, fused = path.rpartition(".")
            weight, offsets = module.weight.float(), module.output_offsets
            for j, piece in enumerate(PIECES_OF[fused]):
                target = hf.get_submodule(f"model.language_model.{parent[6:]}.{piece}")
                target.weight.copy_(weight[offsets[j] : offsets[j + 1]])


@pytest.mark.parametrize("method", ["w4a16", "w8a16"])
def test_quantized_engine_matches_transformers_on_dequantized_weights(tmp_path, method):
    hf = make_hf_model(tie_word_embeddings=False)
    ckpt = save_checkpoint(hf, tmp_path / "ckpt", "original-flat-single")
    llm = LLM(str(ckpt), device="cpu", quantization=method)
    before = {n: p.clone() for n, p in hf.named_parameters()}
    load_dequantized_into(hf, llm.engine.model)
    changed = [n for n, p in hf.named_parameters() if not torch.equal(before[n], p)]
    assert changed  # the quantization error is real: the reference moved with it
    template = llm.tokenizer.apply_chat_template
    prompts = [
        {
            "prompt": template(CONVERSATIONS[n][0]),
            "multi_modal_data": {"image": conversation_images(n)},
        }
        for n in CONVERSATIONS
    ]
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    for name, out in zip(CONVERSATIONS, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, name, 6, hf.config.image_token_id), name


def test_lora_on_a_quantized_base_runs_unmerged():
    llm = LLM(
        "tiny", device="cpu", quantization="w4a16", num_dummy_adapters=2, lora_backend="torch"
    )
    outs = llm.generate(["a", "b", "c"], GREEDY, lora=["lora0", "lora1", None], use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 6 for o in outs)
    assert isinstance(llm.engine.model.model.layers[0].mlp.down_proj.base, QuantLinear)


PARTIAL = [("qkv_only", "qkv_proj", 11), ("down_only", "down_proj", 12)]  # name, target, seed
QUANT_LORA = dict(device="cpu", quantization="w4a16", num_dummy_adapters=2, lora_backend="torch")
PROMPTS, ADAPTERS = ["a", "b", "c", "d"], ["lora0", "lora0", "lora0", "lora1"]


def tokens(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("mode", ["merged", "mixture"])
def test_merged_modes_on_a_quantized_base_use_overlays_and_match_unmerged(mode):
    """The merged adapter runs on a dense overlay (dequantized weight + delta); the quantized
    weights are never written; tokens equal the always-unmerged engine's."""
    unmerged = LLM("tiny", policy="fcfs", **QUANT_LORA)  # always unmerged
    plain = unmerged.generate(PROMPTS, GREEDY, lora=ADAPTERS, use_tqdm=False)
    llm = LLM("tiny", scheduler="valora", policy_options={"force_mode": mode}, **QUANT_LORA)
    qkv = llm.engine.model.model.layers[0].self_attn.qkv_proj.base
    packed = qkv.quantized.qweight.clone()
    outs = llm.generate(PROMPTS, GREEDY, lora=ADAPTERS, use_tqdm=False)
    snap = llm.engine.snapshot()
    assert snap.merge_overlays and snap.is_idle
    assert tokens(outs) == tokens(plain)
    stats = snap.steps  # the step totals the metrics endpoint exports
    assert stats["switches"] > 0 and stats["switch_seconds"] > 0
    assert stats["steps"][mode] > 0 and stats["step_seconds"][mode] > 0
    assert sum(stats["step_tokens"].values()) >= sum(len(t) - 1 for t in tokens(outs)) + 4
    assert torch.equal(qkv.quantized.qweight, packed)
    if snap.merged_adapter is not None:  # the overlay holds W + delta while merged
        assert qkv.merged_weight is not None
        assert not torch.allclose(qkv.merged_weight, qkv.weight)
    llm.engine.switch_merged(None)
    after = llm.engine.snapshot()
    assert after.merged_adapter is None and qkv.merged_weight is None
    # the unmerge is a switch of its own, counted (none when nothing was merged)
    assert after.steps["switches"] == stats["switches"] + (snap.merged_adapter is not None)


def test_quant_merge_off_runs_unmerged_and_stays_exact():
    """Without overlays the merge plans are not carried out; tokens equal unmerged ones."""
    unmerged = LLM("tiny", policy="fcfs", **QUANT_LORA)  # always unmerged
    plain = unmerged.generate(PROMPTS, GREEDY, lora=ADAPTERS, use_tqdm=False)
    llm = LLM(
        "tiny",
        scheduler="valora",
        policy_options={"force_mode": "mixture"},
        quant_merge="off",
        **QUANT_LORA,
    )
    outs = llm.generate(PROMPTS, GREEDY, lora=ADAPTERS, use_tqdm=False)
    snap = llm.engine.snapshot()
    assert not snap.merge_overlays and snap.merged_adapter is None  # no merger built
    steps = snap.steps
    assert steps["switches"] == 0 and steps["steps"]["unmerged"] > 0
    assert steps["steps"]["merged"] == steps["steps"]["mixture"] == 0
    assert tokens(outs) == tokens(plain)


def test_quant_merge_setting_is_checked():
    with pytest.raises(ValueError, match="quant_merge"):
        LLM("tiny", quant_merge="sometimes", **QUANT_LORA)


def test_overlay_merge_switch_rewrites_only_from_the_quantized_weight():
    """Switching m -> m' -> m re-dequantizes before merging: the overlay after the round trip
    equals the one merged first (no delta left over from m'). A unit of the adapter package:
    the manager on the W4A16 model, switched directly."""
    _, lora = quantized_manager("w4a16")
    lora.add_dummy("lora0", 8, seed=1)
    lora.add_dummy("lora1", 16, seed=2)
    keys = [lora.resolve(name) for name in ("lora0", "lora1")]
    lora.switch(keys[0])
    first = {m: w.clone() for m, w in lora.merger.live.items() if m[0] == "qkv_proj"}
    assert first  # the qkv overlays exist
    lora.switch(keys[1])
    assert all(not torch.equal(first[m], lora.merger.live[m]) for m in first)  # m' rewrote
    lora.switch(keys[0])
    assert all(torch.equal(first[m], lora.merger.live[m]) for m in first)
    lora.switch(None)
    assert lora.merged is None and lora.num_switches == 4


@pytest.mark.parametrize("mode", ["merged", "mixture"])
def test_partial_adapters_match_unmerged_in_merged_modes(tmp_path, mode):
    """Adapters that train some targets only (PEFT directories loaded through the API): under
    a merged mode their tokens equal the always-unmerged engine's."""
    llms = [
        LLM("tiny", policy="fcfs", **QUANT_LORA),  # always unmerged
        LLM("tiny", scheduler="valora", policy_options={"force_mode": mode}, **QUANT_LORA),
    ]
    cfg = llms[0].engine.model_config
    for name, target, seed in PARTIAL:
        path = write_peft(partial_adapter(name, cfg, {target}, seed), cfg, tmp_path / name)
        for llm in llms:
            llm.load_lora(name, path)
    adapters = ["qkv_only", "qkv_only", "down_only", None]
    want, got = (llm.generate(PROMPTS, GREEDY, lora=adapters, use_tqdm=False) for llm in llms)
    assert tokens(got) == tokens(want)
    snap = llms[1].engine.snapshot()
    assert snap.steps["switches"] > 0 and snap.steps["steps"][mode] > 0


def test_partial_adapters_merge_into_overlays_without_leftovers():
    """While a partial adapter is merged every quantized layer runs on its overlay, the
    untrained ones holding exactly their dequantized weight; a switch leaves no delta of the
    previous adapter behind (qkv -> down -> qkv); unmerging turns every overlay off. A unit of
    the adapter package: the manager on the W4A16 model."""
    model, lora = quantized_manager("w4a16")
    for name, target, seed in PARTIAL:
        adapter = partial_adapter(name, lora.model_config, {target}, seed)
        lora.registry.register(name, lambda a=adapter: a, "partial dummy")
    layer = model.model.layers[0]
    qkv, down = layer.self_attn.qkv_proj.base, layer.mlp.down_proj.base
    sites = {"qkv_proj": (qkv, down), "down_proj": (down, qkv)}  # (merged, untouched)
    for name, target, _ in (*PARTIAL, PARTIAL[0]):
        merged, untouched = sites[target]
        key = lora.resolve(name)
        lora.switch(key)
        module = lora.registry.weights(key).modules[(target, 0)]
        delta = module.delta_weight(lora.pool.targets[target].spec.slice_offsets)
        assert torch.allclose(merged.merged_weight - merged.weight, delta, atol=1e-6)
        # the other layer computes on its overlay too, holding exactly W0 (no old delta)
        assert torch.equal(untouched.merged_weight, untouched.weight)
    lora.switch(None)
    assert qkv.merged_weight is None and down.merged_weight is None


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["merged", "mixture"])
def test_gpu_overlay_merges_replay_their_own_decode_graphs(mode):
    """On the GPU merged / mixture decode steps replay graphs captured with the overlays on
    ("merged" is a variant of its own there): tokens equal the eager engine's."""
    kwargs = dict(
        device="cuda",
        dtype="bfloat16",
        quantization="w4a16",
        num_dummy_adapters=2,
        scheduler="valora",
        policy_options={"force_mode": mode},
        max_num_seqs=8,
    )
    graphs = LLM("tiny", **kwargs)
    assert "merged" in graphs.engine.runner.forward.graphs.variants
    eager = LLM("tiny", enforce_eager=True, **kwargs)
    want = eager.generate(PROMPTS, GREEDY, lora=ADAPTERS, use_tqdm=False)
    got = graphs.generate(PROMPTS, GREEDY, lora=ADAPTERS, use_tqdm=False)
    assert graphs.engine.snapshot().steps["switches"] > 0
    assert tokens(got) == tokens(want)
