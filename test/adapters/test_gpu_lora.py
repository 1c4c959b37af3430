"""On the GPU (fp32, tiny config): the engine's LoRA with CUDA-graph decode (unmerged and mixture
variants) and the Triton kernels of every policy, against HF + PEFT per adapter, on mixed
batches of text and image prompts; and the base weights exact after merge/unmerge switches."""

from __future__ import annotations

import pytest
import torch
from manager_fixture import dummy_manager
from peft_reference import build_references
from prompts import CONVERSATIONS
from test_lora_parity import assert_clean, assert_matches, run_mixed

from valora.llm import LLM


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return build_references(tmp_path_factory.mktemp("lora_gpu"), list(CONVERSATIONS))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "scheduler, options, eager",
    [
        ("fcfs", {}, False),
        ("fcfs", {}, True),
        ("punica", {}, False),
        ("slora", {}, False),
        ("dlora", {"alpha": 0.1}, False),
        ("valora", {"force_mode": "mixture"}, False),
        ("valora", {"force_mode": "merged"}, False),
        ("valora", {}, False),
    ],
    ids=["fcfs-graphs", "fcfs-eager", "punica", "slora", "dlora", "mixture", "merged", "valora"],
)
def test_gpu_lora_matches_peft(refs, scheduler, options, eager):
    ckpt, dirs, expected = refs
    llm = LLM(
        ckpt,
        device="cuda",
        dtype="float32",
        lora_modules=dirs,
        scheduler=scheduler,
        policy_options=options,
        enforce_eager=eager,
        max_num_seqs=32,
        num_token=4096,
    )
    graphs = getattr(llm.engine.runner.forward, "graphs", None)
    if not eager and scheduler in ("fcfs", "punica", "valora"):
        assert graphs is not None and "unmerged" in graphs.variants
    assert_matches(run_mixed(llm, list(CONVERSATIONS)), expected)
    assert_clean(llm)


@pytest.mark.gpu
def test_gpu_merge_unmerge_keeps_base_weights_bit_identical():
    lora = dummy_manager("cuda", torch.bfloat16)  # the Triton merge kernels, bf16
    before = {k: w.clone() for k, w in lora.merger.live.items()}
    keys = [lora.resolve(f"lora{i}") for i in range(3)]
    for i in range(300):
        lora.switch(keys[i % 3])
        if i % 2:
            lora.switch(None)
    lora.switch(None)
    assert all(torch.equal(before[k], w) for k, w in lora.merger.live.items())
