"""``python -m valora.quantize``: quantize the language model's linears and write a standard GPTQ
(or AWQ GEMM) checkpoint that ``LLM(path)`` loads.

    python -m valora.quantize --model tiny --method gptq --bits 4 --group-size 128 \\
        --calib builtin --out /tmp/tiny-gptq

Methods: ``rtn`` (round to nearest per group) and ``gptq`` (Hessian-guided error feedback over
calibration activations; the Hessians of all layers come from one pass of the unquantized model,
not layer by layer). ``awq`` is not available yet. Calibration: ``builtin`` (a few short chat
prompts) or a text file (one sample per line). A progress bar per layer and a per-layer error
report (relative Frobenius error of the dequantized weight) are printed and saved.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

import exp_suite
from valora.config import is_model_setting
from valora.layers.attention import AttentionMetadata
from valora.quant.convert import PIECES_OF, lm_linears
from valora.quant.formats import to_awq, to_gptq
from valora.quant.gptq import gptq_quantize
from valora.quant.reference import dequantize, quantize_rtn
from valora.tokenizer import Tokenizer
from valora.weights import checkpoint_tensors, load_model

BUILTIN_CALIB = [
    "Describe the weather in a large city during a rainy afternoon.",
    "Explain how a compiler turns source code into machine instructions.",
    "List three ways to reduce memory use in a neural network server.",
    "Write a short story about a robot who learns to paint.",
    "What are the main differences between cats and dogs as pets?",
    "Summarize the rules of chess for a beginner.",
]


def calibration_hessians(
    model, tokenizer: Tokenizer, samples: list[str]
) -> dict[str, torch.Tensor]:
    """sum x x^T of every LM linear's inputs over the calibration tokens (one forward pass)."""
    hessians: dict[str, torch.Tensor] = {}
    hooks = []
    for path, module in lm_linears(model):

        def hook(mod, args, path=path):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            hessians[path] = hessians.get(path, 0) + x.t() @ x

        hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for text in samples:
            ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user",
                                                                  "content": text}]))  # fmt: skip
            t = len(ids)
            positions = torch.arange(t).expand(3, t)
            model(torch.tensor(ids), positions, AttentionMetadata.for_lengths([t]))
    for h in hooks:
        h.remove()
    return hessians


def quantize_weights(model, method, bits, group_size, sym, act_order, hessians) -> tuple:
    """-> ({module path: QuantizedWeight}, {module path: relative error})."""
    quantized, errors = {}, {}
    for path, module in tqdm(list(lm_linears(model)), desc=f"{method} {bits}-bit", unit="layer"):
        weight = module.weight.detach().float().cpu()
        if method == "gptq":
            q = gptq_quantize(weight, hessians[path].cpu(), bits, group_size, sym, act_order)
        else:
            q = quantize_rtn(weight, bits, group_size, sym)
        quantized[path] = q
        errors[path] = float((dequantize(q) - weight).norm() / weight.norm())
    return quantized, errors


def packed_tensors(quantized: dict, model, fmt: str) -> dict[str, torch.Tensor]:
    """Per-projection GPTQ / AWQ tensors (our stacked modules split back into q, k, v ...)."""
    out = {}
    for path, q in quantized.items():
        parent, _, fused = path.rpartition(".")
        offsets = model.get_submodule(path).output_offsets
        for i, piece in enumerate(PIECES_OF[fused]):
            lo, hi = offsets[i], offsets[i + 1]
            cols = [t[:, lo:hi].contiguous() for t in (q.qweight, q.scales, q.zeros)]
            part = type(q)(*cols, q.g_idx, q.bits, q.group_size)
            tensors = to_awq(part) if fmt == "awq" else to_gptq(part)
            out.update({f"{parent}.{piece}.{k}": v.contiguous() for k, v in tensors.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint directory or model setting")
    p.add_argument("--method", choices=["rtn", "gptq", "awq"], default="gptq")
    p.add_argument("--bits", type=int, choices=[4, 8], default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--sym", action="store_true")
    p.add_argument("--act-order", action="store_true", help="GPTQ desc_act")
    p.add_argument("--calib", default="builtin", help="builtin or a text file, one sample a line")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.method == "awq":
        raise SystemExit("--method awq is not available yet: use rtn or gptq")
    model = load_model(args.model, torch.float32, "cpu")
    tokenizer = Tokenizer.load(None if is_model_setting(args.model) else args.model)
    hessians = None
    if args.method == "gptq":
        samples = BUILTIN_CALIB if args.calib == "builtin" else [
            line for line in Path(args.calib).read_text().splitlines() if line.strip()]  # fmt: skip
        hessians = calibration_hessians(model, tokenizer, samples)
    quantized, errors = quantize_weights(model, args.method, args.bits, args.group_size,
                                         args.sym, args.act_order, hessians)  # fmt: skip
    write_checkpoint(model, args, quantized, errors)


def write_checkpoint(model, args, quantized: dict, errors: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = {name: t.contiguous() for name, t in checkpoint_tensors(model).items()
             if not _is_packed_weight(name, quantized)}  # fmt: skip
    tensors = {**dense, **packed_tensors(quantized, model, "gptq")}
    # own storage per tensor: safetensors refuses views (q/k/v rows, a shared g_idx)
    save_file({k: v.clone() for k, v in tensors.items()}, str(out / "model.safetensors"))
    config = dict(exp_suite.MODEL_SETTINGS[args.model]) if is_model_setting(args.model) else (
        json.loads((Path(args.model) / "config.json").read_text()))  # fmt: skip
    config["quantization_config"] = {
        "quant_method": "gptq", "bits": args.bits, "group_size": args.group_size,
        "sym": args.sym, "desc_act": args.act_order, "checkpoint_format": "gptq",
    }  # fmt: skip
    (out / "config.json").write_text(json.dumps(json.loads(json.dumps(config)), indent=1))
    if not is_model_setting(args.model):
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            if (Path(args.model) / name).is_file():
                shutil.copy(Path(args.model) / name, out / name)
    report = {"method": args.method, "bits": args.bits, "group_size": args.group_size,
              "relative_error": errors}  # fmt: skip
    (out / "quantization_report.json").write_text(json.dumps(report, indent=1))
    worst = max(errors, key=errors.get)
    print(
        f"wrote {out}: {len(errors)} layers, mean relative error "
        f"{sum(errors.values()) / len(errors):.4f}, worst {errors[worst]:.4f} ({worst})"
    )


def _is_packed_weight(name: str, quantized: dict) -> bool:
    """The dense .weight of a projection that is written packed instead."""
    for path in quantized:
        parent, _, fused = path.rpartition(".")
        if any(name == f"{parent}.{piece}.weight" for piece in PIECES_OF[fused]):
            return True
    return False


if __name__ == "__main__":
    main()
