#!/usr/bin/env bash
# Benchmarks 3 and 4, against the peer users would pick: PyTorch DDP over
# gloo (bench/ddp_peer.py), one rank per cloud, next to tandem with two pools
# of one rank each, on the same link (tandem-wan-proxy at 100 Mbit/s and each
# RTT given; "no WAN" = no proxy), the same CNN, initial weights (both start
# from one state_dict file), data order, global batch, SGD and steps.
# Bytes per step, what one side sends: for DDP, the bytes that crossed the
# proxy (mean of the two directions; TCP payload, so everything gloo writes);
# for tandem, wan_bytes_sent (pool 0's leader; protobuf message sizes, so
# gRPC/HTTP2/TLS framing is excluded: a few percent).
# Prints a Markdown table.
# Usage: bench/ddp_peer.sh [BUILD_DIR] [STEPS] [GLOBAL_BATCH] [RTTS_MS...]
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
steps=${2:-30}
batch=${3:-512}
shift $(( $# > 3 ? 3 : $# ))
rtts=("$@")
[ ${#rtts[@]} -eq 0 ] && rtts=(none 50)
here=$(cd "$(dirname "$0")" && pwd)
tandem="$build/bin/tandem"
proxy="$build/bin/tandem-wan-proxy"
work=$(mktemp -d /tmp/tandem-ddp-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT

/usr/bin/python3 "$here/ddp_peer.py" --write-init "$work/init.pt" --seed 1

spec() {  # spec NAME MODE CODEC
  cat > "$work/$1.yaml" <<EOF
name: $1
model: {arch: cnn}
train: {epochs: 1, global_batch: $batch, optimizer: sgd, lr: 0.05, momentum: 0.9, seed: 1}
checkpoint: {every_steps: 0, keep: 1}
exchange: {codec: $3, rank: 4, mode: $2, digest_every_steps: 50}
pools:
  - {cloud: cloud-a, workers: 1}
  - {cloud: cloud-b, workers: 1}
EOF
  echo "$work/$1.yaml"
}
field() { /usr/bin/python3 -c "import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print(0 if v is None else v)" "$1" "$2"; }
calc() { /usr/bin/python3 -c "print($1)"; }
run=0

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| RTT ms | tandem codec / mode | DDP hook | tandem bytes/step | DDP bytes/step | bytes tandem ÷ DDP | tandem step ms | DDP step ms | time tandem ÷ DDP | tandem acc | DDP acc | acc tandem − DDP (points) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for rtt in "${rtts[@]}"; do
  targs=() pargs=()
  if [ "$rtt" != none ]; then
    targs=(--wan-rate 100) pargs=(--proxy "$proxy" --wan-rate 100)
    if [ "$rtt" -gt 0 ]; then targs+=(--wan-delay $((rtt / 2))); pargs+=(--wan-delay $((rtt / 2))); fi
  else
    # No WAN: DDP still goes through a proxy with neither delay nor rate limit,
    # only to count its bytes.
    pargs=(--proxy "$proxy")
  fi
  for pair in "none sync none" "fp16 sync fp16" "powersgd sync powersgd" "powersgd delayed powersgd"; do
    read -r codec mode hook <<< "$pair"
    run=$((run + 1))
    t=$("$tandem" train "$(spec "t$run" "$mode" "$codec")" --store "$work/s$run" --certs "$work/certs" \
        --init "$work/init.pt" --max-steps "$steps" --output json ${targs[@]+"${targs[@]}"} | tail -1)
    d=$(/usr/bin/python3 "$here/ddp_peer.py" --hook "$hook" --steps "$steps" --global-batch "$batch" \
        --init "$work/init.pt" ${pargs[@]+"${pargs[@]}"} | tail -1)
    tb=$(calc "$(field "$t" wan_bytes_sent) / $steps")
    db=$(field "$d" bytes_per_step)
    tms=$(calc "$batch / $(field "$t" samples_per_s) * 1000")
    dms=$(calc "$(field "$d" step_s) * 1000")
    ta=$(field "$t" test_accuracy)
    da=$(field "$d" test_accuracy)
    printf "| %s | %s / %s | %s | %.0f | %.0f | %.3f | %.0f | %.0f | %.2f | %.4f | %.4f | %+.2f |\n" \
      "$rtt" "$codec" "$mode" "$hook" "$tb" "$db" "$(calc "$tb / max($db, 1)")" "$tms" "$dms" \
      "$(calc "$tms / $dms")" "$ta" "$da" "$(calc "($ta - $da) * 100")"
  done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
