#!/usr/bin/env bash
# The whole story on this machine (`make demo`): two clouds with an emulated
# WAN between them (100 Mbit/s, 50 ms RTT), one job training on both with a
# compressing codec, cloud-a cut off halfway (its agent and workers frozen, as
# if the cloud vanished), the job recovering on cloud-b and going on, cloud-a
# coming back and rejoining, and the numbers at the end. Leaves no process
# behind. Usage: infra/demo.sh [BUILD_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
tandem="$build/bin/tandem"
spec="$root/examples/fashion-mnist-two-clouds.yaml"
home=$(mktemp -d /tmp/tandem-demo-XXXXXX)
up_pid=""
watch_pid=""
agent_a=""

# A process and its descendants (mpirun puts each rank in a process group of
# its own, so a group signal would miss the workers).
tree() { local p; echo "$1"; for p in $(ps -o pid= --ppid "$1"); do tree "$p"; done; }
signal_cloud_a() { local pids; pids=$(tree "$agent_a"); kill "-$1" $pids 2>/dev/null || true; }
say() { printf '\n\033[1m>>> %s\033[0m\n' "$*"; }
json() { /usr/bin/python3 -c 'import json,sys; print(eval(sys.argv[1], {"d": json.load(sys.stdin)}))' "$1"; }

cleanup() {
  local rc=$?
  [[ -n "$agent_a" ]] && signal_cloud_a CONT
  [[ -n "$watch_pid" ]] && kill "$watch_pid" 2>/dev/null || true
  if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    wait "$up_pid" || rc=1
  fi
  if pgrep -f "$home" >/dev/null; then
    echo "demo: processes were left behind:" >&2
    pgrep -af "$home" >&2
    pkill -KILL -f "$home" || true
    rc=1
  fi
  if [[ $rc -ne 0 ]]; then
    echo "demo: failed; the logs are in $home/logs" >&2
  else
    rm -rf "$home"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls the job's status until the Python expression over it (d) is true.
wait_for() {  # wait_for WHAT SECONDS EXPR
  local what=$1 seconds=$2 expr=$3 end=$((SECONDS + $2))
  while true; do
    local status
    status=$(client status "$job" --output json 2>/dev/null || true)
    if [[ -n "$status" ]] && [[ $(echo "$status" | json "$expr") == True ]]; then return 0; fi
    if ((SECONDS > end)); then
      echo "demo: no $what within ${seconds} s" >&2
      return 1
    fi
    sleep 0.5
  done
}

say "Starting two clouds on this machine: tandem up (coordinator, agents cloud-a and cloud-b, mutual TLS, a WAN of 100 Mbit/s and 50 ms RTT between them)"
"$tandem" up --home "$home" --port 0 --wan-port 0 --wan-delay 25 --wan-rate 100 >"$home/up.out" 2>&1 &
up_pid=$!
for ((i = 0; i < 240; i++)); do
  [[ -s "$home/coordinator" ]] && break
  if ! kill -0 "$up_pid" 2>/dev/null; then cat "$home/up.out" >&2; exit 1; fi
  sleep 0.5
done
[[ -s "$home/coordinator" ]] || { echo "demo: tandem up did not become ready" >&2; cat "$home/up.out" >&2; exit 1; }
cat "$home/up.out"
coordinator=$(cat "$home/coordinator")
client() { "$tandem" "$@" --coordinator "$coordinator" --certs "$home/certs"; }
agent_a=$(sed -n 's/^agent cloud-a *pid \([0-9]*\).*/\1/p' "$home/up.out")

say "Submitting $spec (a CNN on cloud-a and cloud-b, PowerSGD between the clouds)"
job=$(client submit "$spec" --output json | json 'd["job"]')
echo "job $job"
client status "$job" --watch &
watch_pid=$!

wait_for "start of training" 300 'd["state"] == "RUNNING" and d["total_steps"] > 0'
total=$(client status "$job" --output json | json 'd["total_steps"]')
wait_for "halfway" 600 "d['step'] >= $total // 2"
say "Cutting cloud-a off at step $(client status "$job" --output json | json 'd["step"]'): its agent and workers freeze, as if the cloud vanished"
signal_cloud_a STOP
cut_at=$SECONDS
wait_for "recovery" 120 'd["state"] == "RECOVERING" or d["last_recover_s"] > 0'
say "The coordinator lost cloud-a's lease: the job goes on with cloud-b alone, from where it was"
wait_for "the next steps on cloud-b" 120 'd["state"] == "RUNNING" and d["last_recover_s"] > 0'
step_b=$(client status "$job" --output json | json 'd["step"]')
wait_for "progress on cloud-b" 300 "d['step'] >= $step_b + 60"
say "Bringing cloud-a back after $((SECONDS - cut_at)) s"
signal_cloud_a CONT
wait_for "cloud-a rejoining" 300 'any("rejoins" in e["reason"] for e in d["events"]) or d["state"] in ("SUCCEEDED", "FAILED")'
say "cloud-a fetched the current state from cloud-b and trains again"
wait "$watch_pid" || true
watch_pid=""

final=$(client status "$job" --output json)
say "Done"
echo "$final" | json '"state %s after %d steps; final test accuracy %.4f\nbytes sent between the clouds %.1f MB, compression ratio %.1fx\nrestarts %d" % (d["state"], d["step"], d["test_accuracy"], d["wan_bytes_sent"] / 1e6, d["compression_ratio"], d["restarts"])'
# Every loss and every recovery, in order; the demo caused exactly one loss
# (cloud-a, frozen), and a healthy cloud must never have been dropped.
echo "losses and recoveries:"
echo "$final" | json '"\n".join(("  lost:      " + e["reason"]) if e["to"] == "RECOVERING" else ("  recovered: " + e["reason"].split(": ", 1)[1]) for e in d["events"] if e["to"] == "RECOVERING" or e["reason"].startswith("recovered: ")) or "  none"'
losses=$(echo "$final" | json 'len([e for e in d["events"] if e["to"] == "RECOVERING"])')
intended=$(echo "$final" | json 'len([e for e in d["events"] if e["to"] == "RECOVERING" and "cloud-a lost" in e["reason"]])')
# The recovery from the intended loss: the first "recovered" event after it.
echo "$final" | json '(lambda i: "recovery from the loss the demo caused: %s" % next((e["reason"].split(": ", 1)[1] for e in d["events"][i:] if e["reason"].startswith("recovered: ")), "none"))(next((i for i, e in enumerate(d["events"]) if e["to"] == "RECOVERING"), len(d["events"])))'
echo "all events:"
echo "$final" | json '"\n".join("  %s %s -> %s: %s" % (e.get("cloud") or "", e["from"], e["to"], e["reason"]) for e in d["events"])'
[[ $(echo "$final" | json 'd["state"]') == SUCCEEDED ]]
if [[ "$losses" != 1 || "$intended" != 1 ]]; then
  echo "demo: expected exactly one loss (cloud-a, frozen by the demo); there were $losses" >&2
  exit 1
fi
