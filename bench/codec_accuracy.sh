#!/usr/bin/env bash
# Bench 3 (tandem side): bytes sent between clouds per step and final test
# accuracy of the Fashion-MNIST CNN trained by two pools (one rank each) with
# every codec, next to the single-pool uncompressed run with the same epochs,
# global batch and seed. Prints a Markdown table.
# Usage: bench/codec_accuracy.sh [BUILD_DIR] [EPOCHS] [OPTIONS]
#   --codecs "LIST"        two-pool runs, each CODEC or CODEC:KEY=VALUE[,KEY=VALUE]
#                          with exchange keys (rank, factors, topk_ratio); default
#                          "none fp16 bf16 int8 topk powersgd"
#   --seed N               train.seed of every run (initial weights and data
#                          order; default 1)
#   --lr-schedule S        train.lr_schedule of every run (constant, cosine;
#                          default constant)
#   --eval-every N         train.eval_every_steps (accuracy along the run)
#   --max-steps N          stop every run after N steps (for a quick check)
#   --events-dir DIR       keep each run's events (DIR/RUN.events.jsonl, see
#                          `tandem train --events`) and result (DIR/RUN.json)
#   --baseline FILE        reuse this one-pool result (a RUN.json) instead of
#                          running the one-pool job
#   --fp32-bytes-per-step N  "vs fp32" against N when `none` is not in --codecs
set -euo pipefail
build=${1:-build}
epochs=${2:-1}
shift $(( $# < 2 ? $# : 2 ))
codecs="none fp16 bf16 int8 topk powersgd"
eval_every=0
seed=1
lr_schedule=constant
max_steps=0
events_dir=""
baseline_file=""
fp32_per_step=""
while [ $# -gt 0 ]; do
  case $1 in
    --codecs) codecs=$2 ;;
    --seed) seed=$2 ;;
    --lr-schedule) lr_schedule=$2 ;;
    --eval-every) eval_every=$2 ;;
    --max-steps) max_steps=$2 ;;
    --events-dir) events_dir=$2 ;;
    --baseline) baseline_file=$2 ;;
    --fp32-bytes-per-step) fp32_per_step=$2 ;;
    *) echo "codec_accuracy.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
tandem="$build/bin/tandem"
work=$(mktemp -d /tmp/tandem-codec-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
[ -n "$events_dir" ] && mkdir -p "$events_dir"

spec() {  # spec NAME CODEC RANK FACTORS TOPK_RATIO POOLS...
  local name=$1 codec=$2 rank=$3 factors=$4 topk_ratio=$5
  shift 5
  {
    echo "name: $name"
    echo "model: {arch: cnn}"
    echo "train: {epochs: $epochs, global_batch: 128, optimizer: sgd, lr: 0.05, momentum: 0.9, lr_schedule: $lr_schedule, seed: $seed, eval_every_steps: $eval_every}"
    echo "checkpoint: {every_steps: 0, keep: 1}"
    echo "exchange: {codec: $codec, rank: $rank, factors: $factors, topk_ratio: $topk_ratio, digest_every_steps: 50}"
    echo "pools:"
    for pool in "$@"; do echo "  - $pool"; done
  } > "$work/$name.yaml"
  echo "$work/$name.yaml"
}

train() {  # train NAME SPEC [FLAGS...]: prints the result line, keeps events
  local name=$1 spec_file=$2
  shift 2
  local flags=(--store "$work/store-$name" --output json --max-steps "$max_steps")
  [ -n "$events_dir" ] && rm -f "$events_dir/$name.events.jsonl" &&
    flags+=(--events "$events_dir/$name.events.jsonl")
  local out
  out=$("$tandem" train "$spec_file" "${flags[@]}" "$@" | tail -1)
  [ -n "$events_dir" ] && echo "$out" > "$events_dir/$name.json"
  echo "$out"
}

field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 0))" "$1" "$2"; }
calc() { /usr/bin/python3 -c "print($1)"; }

echo "| run | codec | steps | bytes/step between clouds | vs fp32 | compression ratio | test accuracy | Δ vs one pool (points) | wall s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
if [ -n "$baseline_file" ]; then
  base=$(cat "$baseline_file")
else
  base=$(train one-pool "$(spec one-pool none 4 fp32 0.01 '{cloud: local, workers: 2}')")
fi
base_acc=$(field "$base" test_accuracy)
printf "| one pool, 2 ranks | none | %s | 0 | | | %.4f | | %.0f |\n" "$(field "$base" steps)" "$base_acc" "$(field "$base" wall_s)"
for item in $codecs; do
  codec=${item%%:*}
  rank=4 factors=fp32 topk_ratio=0.01 label=$codec name="two-$codec"
  if [ "$item" != "$codec" ]; then
    settings=${item#*:}
    for kv in ${settings//,/ }; do
      case ${kv%%=*} in
        rank) rank=${kv#*=} ;;
        factors) factors=${kv#*=} ;;
        topk_ratio) topk_ratio=${kv#*=} ;;
        *) echo "codec_accuracy.sh: unknown setting $kv" >&2; exit 2 ;;
      esac
    done
    label="$codec ${settings//,/ }"
    name="two-$codec-${settings//[=,]/-}"
  fi
  out=$(train "$name" "$(spec "$name" "$codec" "$rank" "$factors" "$topk_ratio" '{cloud: cloud-a, workers: 1}' '{cloud: cloud-b, workers: 1}')" \
        --certs "$work/certs")
  steps=$(field "$out" steps)
  bytes=$(field "$out" wan_bytes_sent)
  per_step=$(( bytes / steps ))
  [ -z "$fp32_per_step" ] && [ "$codec" = none ] && fp32_per_step=$per_step
  vs_fp32=""
  [ -n "$fp32_per_step" ] && vs_fp32=$(printf "%.1fx fewer" "$(calc "$fp32_per_step / $per_step")")
  acc=$(field "$out" test_accuracy)
  printf "| two pools, 1+1 ranks | %s | %s | %d | %s | %.1f | %.4f | %+.2f | %.0f |\n" \
    "$label" "$steps" "$per_step" "$vs_fp32" \
    "$(field "$out" compression_ratio)" "$acc" "$(calc "($acc - $base_acc) * 100")" \
    "$(field "$out" wall_s)"
done
