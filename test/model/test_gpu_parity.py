"""GPU parity at the real Qwen2-VL-2B / -7B dimensions (dummy weights shared with transformers).

fp32: our logits match transformers' within 1e-4 relative. bf16: our error against the fp32
reference is no larger than transformers' own bf16 error (plus a small margin).
"""

from __future__ import annotations

import contextlib
import gc
import json

import pytest
import torch
from prompts import CONVERSATIONS
from test_parity_hf import build_prompt, hf_logits, our_logits, relative_error
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

import exp_suite
from valora.tokenizer import Tokenizer
from valora.weights import build_model, checkpoint_tensors, load_checkpoint_tensors, load_model

pytestmark = pytest.mark.gpu
NAMES = list(CONVERSATIONS)


@pytest.fixture(autouse=True)
def exact_fp32_convolutions():
    """transformers runs the patch embedding as a Conv3d, which cuDNN computes in TF32 by
    default; the fp32 reference must be full fp32."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def hf_module_name(checkpoint_name: str) -> str:
    """Original checkpoint name -> transformers' module name (the 4.52+ layout)."""
    if checkpoint_name.startswith("model."):
        return "model.language_model." + checkpoint_name[len("model.") :]
    if checkpoint_name.startswith("visual."):
        return "model." + checkpoint_name
    return checkpoint_name


def hf_from_ours(setting: str, ours, dtype: torch.dtype) -> Qwen2VLForConditionalGeneration:
    config = Qwen2VLConfig(**json.loads(json.dumps(dict(exp_suite.MODEL_SETTINGS[setting]))))
    with torch.device("cuda"), default_dtype(dtype):
        hf = Qwen2VLForConditionalGeneration(config).eval()
    renamed = {hf_module_name(k): v for k, v in checkpoint_tensors(ours).items()}
    missing, unexpected = hf.load_state_dict(renamed, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    return hf


def hf_reference_logits(setting, ours, dtype, tokenizer) -> list[torch.Tensor]:
    hf = hf_from_ours(setting, ours, dtype)
    out = []
    for name in NAMES:
        ids, images = build_prompt(tokenizer, name, hf.config.image_token_id)
        out.append(hf_logits(hf, ids, images).cpu())
    del hf
    gc.collect()
    torch.cuda.empty_cache()
    return out


@pytest.mark.parametrize("setting", ["qwen2-vl-2b", "qwen2-vl-7b"])
def test_real_dimensions_match_transformers_on_gpu(setting):
    tokenizer = Tokenizer.builtin()
    ours_bf16 = load_model(setting, dtype=torch.bfloat16, device="cuda")
    ours_bf16_logits = [x.cpu() for x in our_logits(ours_bf16, tokenizer, NAMES)]
    ref_bf16 = hf_reference_logits(setting, ours_bf16, torch.bfloat16, tokenizer)
    ref_fp32 = hf_reference_logits(setting, ours_bf16, torch.float32, tokenizer)

    ours_fp32 = build_model(ours_bf16.cfg, torch.float32, "cuda")
    load_checkpoint_tensors(ours_fp32, checkpoint_tensors(ours_bf16))
    del ours_bf16
    ours_fp32_logits = [x.cpu() for x in our_logits(ours_fp32, tokenizer, NAMES)]

    for name, ours32, ours16, hf32, hf16 in zip(
        NAMES, ours_fp32_logits, ours_bf16_logits, ref_fp32, ref_bf16
    ):
        assert relative_error(ours32, hf32) <= 1e-4, name
        our_err, hf_err = relative_error(ours16, hf32), relative_error(hf16, hf32)
        print(
            f"{setting} {name}: fp32 {relative_error(ours32, hf32):.2e}; "
            f"bf16 vs fp32 reference: ours {our_err:.2e}, transformers {hf_err:.2e}"
        )
        assert our_err <= 1.5 * hf_err + 2e-3, f"{name}: ours {our_err:.3e} vs HF {hf_err:.3e}"
