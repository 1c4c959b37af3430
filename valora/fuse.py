"""``valora-fuse``: accuracy-aware adapter generation over a task suite.

    python -m valora.fuse --model CKPT --data TASKS_DIR --floor colour=0.9 --floor count=0.8 \\
        --floor latex_ocr=20 --out fused/ [--soft-labels TASK=answers.jsonl] [training flags]

Each ``--floor TASK=VALUE`` names a task of the suite (``python -m valora.tasks``'s layout:
``DATA/<task>/train.jsonl`` and ``val.jsonl``) and its requirement in the task's metric (exact and
edit in 0-1, BLEU in 0-100). Adapters are trained with ``valora.train``'s trainer (same flags) and
scored greedily on the validation split by the offline engine; the search is
``valora.training.fusion.fuse``. ``--soft-labels`` replaces a task's training answers by id with
another model's (the paper's supervision from existing small models). Writes the adapters,
``manifest.json`` (task -> adapter, score, floor, met; adapter counts) and prints the server's
``--lora-modules`` argument.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from valora.cli_fields import key_value_pairs
from valora.evaluation.dataset import load_split
from valora.evaluation.evaluate import evaluate as evaluate_examples
from valora.evaluation.offline import OfflineRunner
from valora.llm import LLM
from valora.train import _add_lora_args, _add_optim_args, _add_run_args, config_from_args
from valora.training.fusion import FusionTask, fuse, manifest
from valora.training.sft import SFTConfig, load_records, train_lora


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF Qwen2-VL checkpoint directory")
    p.add_argument("--data", required=True, help="task-suite directory (python -m valora.tasks)")
    p.add_argument("--floor", action="append", required=True, metavar="TASK=VALUE")
    p.add_argument("--soft-labels", action="append", default=[], metavar="TASK=JSONL")
    p.add_argument("--out", required=True, help="adapters and manifest.json go here")
    p.add_argument("--max-tokens", type=int, default=32, help="generated tokens when scoring")
    d = SFTConfig()
    _add_lora_args(p.add_argument_group("LoRA"), d)
    _add_optim_args(p.add_argument_group("optimisation"), d)
    _add_run_args(p.add_argument_group("model and run"), d)
    return p


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    return dict(key_value_pairs(items, flag, "TASK=VALUE"))


def suite_tasks(data: Path, floors: dict[str, str]) -> list[FusionTask]:
    """The fused tasks, with metric and modality from the suite's ``tasks.json``."""
    described = json.loads((data / "tasks.json").read_text())
    unknown = sorted(set(floors) - set(described))
    if unknown:
        raise SystemExit(f"tasks not in {data / 'tasks.json'}: {unknown}")
    return [
        FusionTask(name, float(floor), described[name]["metric"], described[name]["modality"])
        for name, floor in floors.items()
    ]


def training_records(data: Path, task: str, soft_labels: dict[str, str]) -> list[dict]:
    """A task's training examples; with soft labels, each answer replaced by the teacher's."""
    records = load_records(data / task / "train.jsonl")
    if task not in soft_labels:
        return records
    teacher = {}
    for line in Path(soft_labels[task]).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            teacher[row["id"]] = row["answer"]
    missing = [r["id"] for r in records if r["id"] not in teacher]
    if missing:
        raise SystemExit(f"{soft_labels[task]} has no answer for {len(missing)} examples")
    return [{**r, "answer": teacher[r["id"]]} for r in records]


class Scorer:
    """One offline engine for every evaluation: each candidate adapter is loaded, scored on
    the task's validation examples (greedy) and unloaded."""

    def __init__(self, model: str, data: Path, cfg: SFTConfig, max_tokens: int) -> None:
        device = cfg.device or None
        kwargs = {"device": device} if device else {}
        if cfg.mm_processor_kwargs:
            kwargs["mm_processor_kwargs"] = dict(cfg.mm_processor_kwargs)
        self.llm = LLM(model, enable_lora=True, max_lora_rank=max(cfg.rank, 8), **kwargs)
        self.runner = OfflineRunner(self.llm, max_tokens=max_tokens, use_tqdm=False)
        self.data = data
        self.count = 0

    def __call__(self, adapter_dir: Path, task: str) -> float:
        name = f"candidate{self.count}"
        self.count += 1
        self.llm.load_lora(name, str(adapter_dir))
        try:
            examples = load_split(self.data / task / "val.jsonl")
            result = evaluate_examples(examples, self.runner, adapters=(name,))
        finally:
            self.llm.unload_lora(name)
        return float(result.rows[0]["score"])


def main(argv: list[str] | None = None) -> None:
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """``main`` returning the manifest (tests, notebooks)."""
    args = build_parser().parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    tasks = suite_tasks(data, parse_pairs(args.floor, "--floor"))
    soft = parse_pairs(args.soft_labels, "--soft-labels")
    cfg = config_from_args(args)
    scorer = Scorer(args.model, data, cfg, args.max_tokens)

    def train(names, path: Path) -> None:
        records = [r for name in names for r in training_records(data, name, soft)]
        train_lora(args.model, records, path, cfg)

    plan = fuse(tasks, train, scorer, out)
    record = manifest(plan, tasks)
    (out / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
    print(format_manifest(record))
    return record


def format_manifest(record: dict) -> str:
    lines = [f"{'task':<14}{'adapter':<10}{'metric':<8}{'score':>8}{'floor':>8}  met"]
    for task, row in record["tasks"].items():
        lines.append(
            f"{task:<14}{row['adapter']:<10}{row['metric']:<8}{row['score']:>8.3f}"
            f"{row['floor']:>8.3f}  {'yes' if row['met'] else 'NO'}"
        )
    lines.append(
        f"{record['num_adapters']} adapters for {record['one_adapter_per_task']} tasks "
        f"({record['trainings']} trainings)"
    )
    lines.append(f"--lora-modules {record['lora_modules']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
