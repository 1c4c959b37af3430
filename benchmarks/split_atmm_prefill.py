"""Split one ATMM prefill call into its shrink and expand times (``harness.gpu_time``),
next to each kernel's own memory floor. Diagnostic for the op-cost benchmark; writes JSON.

    python benchmarks/split_atmm_prefill.py --out benchmarks/results/atmm_prefill_split_h100.json
"""

from __future__ import annotations

import argparse
import json

import torch
from harness import copy_bandwidth, gpu_time, lora_workload, provenance

from atmm.ops.lora import expand_config, lora_expand, lora_shrink, shrink_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/atmm_prefill_split.json")
    args = parser.parse_args()
    bandwidth, rows = copy_bandwidth(), []
    for n in (3584, 18944):
        for tokens in (1024, 8192):
            w, segs, x, y, ranks = lora_workload("prefill", tokens, n, torch.bfloat16, tokens)
            v = lora_shrink(x, w, segs)
            shrink = gpu_time(lambda: lora_shrink(x, w, segs, out=v))  # noqa: B023
            expand = gpu_time(lambda: lora_expand(v, y, w, segs))  # noqa: B023
            itemsize = 2
            shrink_bytes = itemsize * (tokens * 3584 + sum(ranks) * 3584) + 4 * tokens * 128
            expand_bytes = itemsize * (2 * tokens * n + sum(ranks) * n) + 4 * tokens * 128
            rows.append(
                {
                    "N": n,
                    "tokens": tokens,
                    "shrink_us": shrink * 1e6,
                    "shrink_floor_us": shrink_bytes / bandwidth * 1e6,
                    "expand_us": expand * 1e6,
                    "expand_floor_us": expand_bytes / bandwidth * 1e6,
                    "shrink_config": shrink_config(x, w, segs),
                    "expand_config": expand_config(y, w, segs),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "w") as f:
        json.dump(
            {**provenance(), "copy_bandwidth_GBps": bandwidth / 1e9, "rows": rows}, f, indent=1
        )


if __name__ == "__main__":
    main()
