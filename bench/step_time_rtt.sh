#!/usr/bin/env bash
# Bench 4: step time of the Fashion-MNIST CNN on two pools (one rank each)
# with an emulated WAN (100 Mbit/s, RTT 0/10/50/100 ms) between their leaders,
# against the same job with no WAN (no proxy) between the pools, in sync and
# in delayed mode; then the accuracy cost of delayed vs sync after the same
# steps (one epoch of ACC_ARCH at global batch 128, no WAN; with SGD momentum
# 0.9 and 0). Every number of a table comes from the same run of this script.
# Prints Markdown tables.
# Usage: bench/step_time_rtt.sh [BUILD_DIR] [STEPS|0] [GLOBAL_BATCH] [CODEC] [ACC_ARCH|none] [REPEATS]
# (STEPS 0: the accuracy table only; ACC_ARCH none: the step-time table only)
set -euo pipefail
build=${1:-build}
steps=${2:-40}
batch=${3:-512}
codec=${4:-powersgd}
acc_arch=${5:-cnn}
repeats=${6:-2}
tandem="$build/bin/tandem"
work=$(mktemp -d /tmp/tandem-rtt-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT

spec() {  # spec NAME MODE CODEC [ARCH BATCH MOMENTUM]
  cat > "$work/$1.yaml" <<EOF
name: $1
model: {arch: ${4:-cnn}}
train: {epochs: 1, global_batch: ${5:-$batch}, optimizer: sgd, lr: 0.05, momentum: ${6:-0.9}, seed: 1}
checkpoint: {every_steps: 0, keep: 1}
exchange: {codec: $3, rank: 4, mode: $2, digest_every_steps: 50}
pools:
  - {cloud: cloud-a, workers: 1}
  - {cloud: cloud-b, workers: 1}
EOF
  echo "$work/$1.yaml"
}

field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 0))" "$1" "$2"; }
calc() { /usr/bin/python3 -c "print($1)"; }
train() {  # train SPEC ARGS... -> the done line
  "$tandem" train "$1" --store "$(mktemp -d "$work/store-XXXXXX")" --certs "$work/certs" \
    --output json "${@:2}" | tail -1
}
step_ms() { calc "$batch / $(field "$1" samples_per_s) * 1000"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
if [ "$steps" -gt 0 ]; then
  echo "| mode | RTT ms | step ms, no WAN | step ms, WAN | WAN ÷ no WAN | WAN ÷ sync no WAN |"
  echo "| --- | --- | --- | --- | --- | --- |"
fi
median() { /usr/bin/python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
declare -A sync_base
rtts=(0 10 50 100)
[ "$steps" -eq 0 ] && rtts=()  # accuracy table only
for rtt in "${rtts[@]+"${rtts[@]}"}"; do
  for mode in sync delayed; do
    s=$(spec "rtt-$mode" "$mode" "$codec")
    args=(--wan-rate 100)
    [ "$rtt" -gt 0 ] && args+=(--wan-delay $((rtt / 2)))
    # The other engineers' load on the shared cores comes and goes: each WAN
    # run is paired with a no-WAN run right before it, and the medians of
    # the pairs are compared.
    base=() wan=()
    for _ in $(seq "$repeats"); do
      base+=("$(step_ms "$(train "$s" --max-steps "$steps")")")
      wan+=("$(step_ms "$(train "$s" --max-steps "$steps" "${args[@]}")")")
    done
    b=$(median "${base[@]}")
    w=$(median "${wan[@]}")
    [ "$mode" = sync ] && sync_base[$rtt]=$b
    printf "| %s | %d | %.0f | %.0f | %.2f | %.2f |\n" "$mode" "$rtt" "$b" "$w" \
      "$(calc "$w / $b")" "$(calc "$w / ${sync_base[$rtt]}")"
  done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
[ "$acc_arch" = none ] && exit 0
echo "Accuracy after one epoch ($acc_arch, global batch 128), no WAN, same steps and data order:"
echo
echo "| codec | SGD momentum | sync test accuracy | delayed test accuracy | delayed − sync (points) |"
echo "| --- | --- | --- | --- | --- |"
for c in none "$codec"; do
  for m in 0.9 0; do
    sync=$(train "$(spec "acc-sync-$c-$m" sync "$c" "$acc_arch" 128 "$m")")
    delayed=$(train "$(spec "acc-delayed-$c-$m" delayed "$c" "$acc_arch" 128 "$m")")
    a=$(field "$sync" test_accuracy)
    b=$(field "$delayed" test_accuracy)
    printf "| %s | %s | %.4f | %.4f | %+.2f |\n" "$c" "$m" "$a" "$b" "$(calc "($b - $a) * 100")"
  done
done
echo
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
