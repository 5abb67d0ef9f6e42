#!/usr/bin/env bash
# Bench 3 (tandem side): bytes sent between clouds per step and final test
# accuracy of the Fashion-MNIST CNN trained by two pools (one rank each) with
# every codec, next to the single-pool uncompressed run with the same epochs,
# global batch and seed. Prints a Markdown table.
# Usage: bench/codec_accuracy.sh [BUILD_DIR] [EPOCHS]
set -euo pipefail
build=${1:-build}
epochs=${2:-1}
tandem="$build/bin/tandem"
work=$(mktemp -d /tmp/tandem-codec-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT

spec() {  # spec NAME CODEC POOLS...
  local name=$1 codec=$2
  shift 2
  {
    echo "name: $name"
    echo "model: {arch: cnn}"
    echo "train: {epochs: $epochs, global_batch: 128, optimizer: sgd, lr: 0.05, momentum: 0.9, seed: 1}"
    echo "checkpoint: {every_steps: 0, keep: 1}"
    echo "exchange: {codec: $codec, rank: 4, topk_ratio: 0.01, digest_every_steps: 50}"
    echo "pools:"
    for pool in "$@"; do echo "  - $pool"; done
  } > "$work/$name.yaml"
  echo "$work/$name.yaml"
}

field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 0))" "$1" "$2"; }
calc() { /usr/bin/python3 -c "print($1)"; }

echo "| run | codec | steps | bytes/step between clouds | vs fp32 | compression ratio | test accuracy | Δ vs one pool (points) | wall s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
base=$("$tandem" train "$(spec one-pool none '{cloud: local, workers: 2}')" --store "$work/one" --output json | tail -1)
base_acc=$(field "$base" test_accuracy)
printf "| one pool, 2 ranks | none | %s | 0 | | | %.4f | | %.0f |\n" "$(field "$base" steps)" "$base_acc" "$(field "$base" wall_s)"
fp32_per_step=""
for codec in none fp16 bf16 int8 topk powersgd; do
  out=$("$tandem" train "$(spec "two-$codec" "$codec" '{cloud: cloud-a, workers: 1}' '{cloud: cloud-b, workers: 1}')" \
        --store "$work/$codec" --certs "$work/certs" --output json | tail -1)
  steps=$(field "$out" steps)
  bytes=$(field "$out" wan_bytes_sent)
  per_step=$(( bytes / steps ))
  [ -z "$fp32_per_step" ] && fp32_per_step=$per_step
  acc=$(field "$out" test_accuracy)
  printf "| two pools, 1+1 ranks | %s | %s | %d | %.1fx fewer | %.1f | %.4f | %+.2f | %.0f |\n" \
    "$codec" "$steps" "$per_step" "$(calc "$fp32_per_step / $per_step")" \
    "$(field "$out" compression_ratio)" "$acc" "$(calc "($acc - $base_acc) * 100")" \
    "$(field "$out" wall_s)"
done
