#!/usr/bin/env bash
# The adapter pipeline end to end on the CPU with the tiny model (about 4 minutes on two cores):
# task suite -> tiny base -> accuracy-aware fusion -> valora-serve -> valora-eval through the
# server -> figure. Usage: examples/pipeline_cpu.sh [WORK_DIR] (default: pipeline-run).
# Needs: pip install -e ".[train,server]" (and jq). The same recipe is asserted by
# test/training/test_learning_e2e.py (pytest --run-slow).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-pipeline-run}
port=${PORT:-8011}
mkdir -p "$work"
cd "$work"

python -m valora.tasks --out tasks --tasks colour,clip_colour --train 200 --val 50 --seed 0
python -m valora.training.tiny_base --out base
valora-fuse --model base --data tasks --out fused --floor colour=0.8 --floor clip_colour=0.8 \
    --rank 16 --target-modules all --epochs 15 --lr 3e-3 --batch-size 8 --device cpu --no-progress

valora-serve --model base --device cpu --port "$port" --lora-modules $(jq -r .lora_modules fused/manifest.json) &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    kill -0 $server || exit 1
    sleep 1
done

mapping=$(jq -r '.tasks | to_entries | map("\(.key)=\(.value.adapter)") | join(" ")' fused/manifest.json)
adapters=$(jq -r '[.adapters[].name] | join(" ")' fused/manifest.json)
tasks=$(jq -r '.tasks | keys | join(" ")' fused/manifest.json)
valora-eval --data tasks --split val --server "http://127.0.0.1:$port" --no-tqdm \
    --tasks $tasks --adapters base $adapters --task-adapter $mapping --out eval.json
python "$repo/draw/eval_tasks.py" eval.json --out eval_tasks.png
jq '{num_adapters, one_adapter_per_task, tasks}' fused/manifest.json
