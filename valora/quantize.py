"""``python -m valora.quantize``: quantize the language model's linears and write a standard GPTQ
or AWQ GEMM checkpoint that ``LLM(path)`` loads.

    python -m valora.quantize --model tiny --method gptq --bits 4 --group-size 128 \\
        --calib builtin --out /tmp/tiny-gptq
    python -m valora.quantize --model tiny --method awq --group-size 128 --out /tmp/tiny-awq

Methods (a GPTQ checkpoint for ``rtn`` and ``gptq``, an AWQ GEMM one for ``awq``):

* ``rtn``: round to nearest per group, 4 or 8 bits, ``--sym`` or with zero points.
* ``gptq``: Hessian-guided error feedback over calibration activations (``--act-order``: GPTQ's
  desc_act); the Hessians of all layers come from one pass of the unquantized model, not layer
  by layer.
* ``awq``: activation-aware per-channel scales searched against the calibration activations
  and folded into the RMSNorm weights / up rows before round to nearest
  (``valora.quant.awq``); 4-bit with zero points only, as the AWQ GEMM format is, so ``--bits 8``,
  ``--sym`` and ``--act-order`` are refused. Statistics come from one pass of the unquantized
  model too. The chosen alpha of every scaled linear is saved in the report.

Calibration (gptq, awq): ``builtin`` (a few short chat prompts) or a text file (one sample per
line). A progress bar per layer and a per-layer error report (relative Frobenius error of the
dequantized weight; for awq of the effective weight dequant / s) are printed and saved in
``quantization_report.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from valora.config import is_model_setting
from valora.model_settings import MODEL_SETTINGS
from valora.quant.awq import awq_quantize_model
from valora.quant.calibration import collect_input_stats, load_samples
from valora.quant.convert import PIECES_OF, lm_linears
from valora.quant.formats import to_awq, to_gptq
from valora.quant.gptq import gptq_quantize
from valora.quant.reference import dequantize, quantize_rtn
from valora.tokenizer import Tokenizer
from valora.weights import checkpoint_tensors, load_model


def quantize_weights(model, method, bits, group_size, sym, act_order, hessians) -> tuple:
    """rtn / gptq -> ({module path: QuantizedWeight}, {module path: relative error})."""
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
        _check_awq_args(args)
    return args


def _check_awq_args(args: argparse.Namespace) -> None:
    """AWQ GEMM checkpoints are 4-bit, asymmetric (zero points), without act-order."""
    if args.bits != 4:
        raise SystemExit(
            f"--method awq writes AWQ GEMM checkpoints, which are 4-bit only "
            f"(got --bits {args.bits}): use --method gptq for 8 bits"
        )
    if args.act_order:
        raise SystemExit("--act-order is GPTQ's desc_act; AWQ has no act-order: drop it")
    if args.sym:
        raise SystemExit("--sym: AWQ GEMM checkpoints always carry zero points: drop it")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = load_model(args.model, torch.float32, "cpu")
    tokenizer = Tokenizer.load(None if is_model_setting(args.model) else args.model)
    alphas, stats = None, None
    if args.method in ("gptq", "awq"):
        stats = collect_input_stats(model, tokenizer, load_samples(args.calib))
    if args.method == "awq":
        result = awq_quantize_model(model, stats, args.bits, args.group_size)  # folds ``model``
        quantized, errors, alphas = result.quantized, result.errors, result.alphas
    else:
        hessians = None if stats is None else stats.hessians
        quantized, errors = quantize_weights(
            model, args.method, args.bits, args.group_size, args.sym, args.act_order, hessians
        )
    write_checkpoint(model, args, quantized, errors, alphas)


def quantization_config(args: argparse.Namespace) -> dict:
    """config.json's ``quantization_config``, as AutoGPTQ / AutoAWQ write it."""
    if args.method == "awq":
        return {
            "quant_method": "awq",
            "version": "gemm",
            "zero_point": True,
            "bits": args.bits,
            "group_size": args.group_size,
            "w_bit": args.bits,
            "q_group_size": args.group_size,
            "modules_to_not_convert": None,
        }
    return {
        "quant_method": "gptq",
        "bits": args.bits,
        "group_size": args.group_size,
        "sym": args.sym,
        "desc_act": args.act_order,
        "checkpoint_format": "gptq",
    }


def write_checkpoint(
    model, args, quantized: dict, errors: dict, alphas: dict | None = None
) -> None:
    """``model``'s dense tensors (for awq: with the folded norms) and the packed ``quantized``
    ones (GPTQ, or AWQ GEMM for awq), config.json, the tokenizer files and the error report."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = {
        name: t.contiguous()
        for name, t in checkpoint_tensors(model).items()
        if not _is_packed_weight(name, quantized)
    }
    fmt = "awq" if args.method == "awq" else "gptq"
    tensors = {**dense, **packed_tensors(quantized, model, fmt)}
    # own storage per tensor: safetensors refuses views (q/k/v rows, a shared g_idx)
    save_file({k: v.clone() for k, v in tensors.items()}, str(out / "model.safetensors"))
    config = (
        dict(MODEL_SETTINGS[args.model])
        if is_model_setting(args.model)
        else (json.loads((Path(args.model) / "config.json").read_text()))
    )
    config["quantization_config"] = quantization_config(args)
    (out / "config.json").write_text(json.dumps(json.loads(json.dumps(config)), indent=1))
    if not is_model_setting(args.model):
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            if (Path(args.model) / name).is_file():
                shutil.copy(Path(args.model) / name, out / name)
    write_report(out, args, errors, alphas)


def write_report(out: Path, args, errors: dict, alphas: dict | None) -> None:
    report = {
        "method": args.method,
        "bits": args.bits,
        "group_size": args.group_size,
        "relative_error": errors,
    }
    if alphas is not None:
        report["alpha"] = alphas  # None: the linear is in no scale group (plain RTN)
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
