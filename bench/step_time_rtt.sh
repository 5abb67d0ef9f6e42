#!/usr/bin/env bash
# Bench 4: step time of the Fashion-MNIST CNN on two pools (one rank each)
# with an emulated WAN (100 Mbit/s, RTT 0/10/50/100 ms) between their leaders,
# against the same job with no WAN (no proxy) between the pools, in sync and
# in delayed mode; then the accuracy cost of delayed vs sync after the same
# steps (one epoch of ACC_ARCH at global batch 128, no WAN; with SGD momentum
# 0.9 and 0). Every number of a table comes from the same run of this script.
# Prints Markdown tables.
# Usage: bench/step_time_rtt.sh [BUILD_DIR] [STEPS] [GLOBAL_BATCH] [CODEC] [ACC_ARCH]
set -euo pipefail
build=${1:-build}
steps=${2:-40}
batch=${3:-512}
codec=${4:-powersgd}
acc_arch=${5:-cnn}
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
echo "| mode | RTT ms | step ms | × same mode, no WAN | × sync, no WAN |"
echo "| --- | --- | --- | --- | --- |"
declare -A base
for mode in sync delayed; do
  s=$(spec "rtt-$mode" "$mode" "$codec")
  out=$(train "$s" --max-steps "$steps")
  base[$mode]=$(step_ms "$out")
  printf "| %s | no WAN | %.0f | 1.00 | %.2f |\n" "$mode" "${base[$mode]}" \
    "$(calc "${base[$mode]} / ${base[sync]}")"
  for rtt in 0 10 50 100; do
    args=(--wan-rate 100)
    [ "$rtt" -gt 0 ] && args+=(--wan-delay $((rtt / 2)))
    out=$(train "$s" --max-steps "$steps" "${args[@]}")
    ms=$(step_ms "$out")
    printf "| %s | %d | %.0f | %.2f | %.2f |\n" "$mode" "$rtt" "$ms" \
      "$(calc "$ms / ${base[$mode]}")" "$(calc "$ms / ${base[sync]}")"
  done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
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
