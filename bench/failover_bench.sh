#!/usr/bin/env bash
# Issue 5 benchmarks, on this machine with `tandem up` (default lease
# settings: ttl 3 s, heartbeats every 1 s; link liveness window 4 s):
#  1. Losing a cloud: cloud-a's agent, mpirun and workers are frozen
#     (SIGSTOP), so its lease expires as if the cloud vanished. Reports the
#     time from the loss to the re-plan (detection) and to the next completed
#     step (recovery), the steps lost (from the workers' sample logs: steps the
#     survivor had completed that it computed again), and the ratio of the
#     recovery time to the steady-state step time measured in the same run.
#  2. A partition of the WAN link (both proxies cut): the leaders' links hear
#     nothing from each other for the liveness window and report the peer as
#     "link dead"; same numbers.
#  3. Migration bytes: a one-pool job moved cloud-a -> cloud-b (the target has
#     no copy: full) and back to cloud-a (which holds the job's checkpoint
#     from before: incremental), with the bytes the copy sent.
#  4. With EVENTS_FILE: one more two-cloud job with the test accuracy every 50
#     steps, cloud-a frozen at step 200 and thawed 60 steps after the
#     recovery; its evaluations and the failover step go to EVENTS_FILE as
#     JSON lines ({"event":"eval",...}, {"event":"failover","step":N}) for
#     bench/run's accuracy plot.
# Prints Markdown tables.
# Usage: bench/failover_bench.sh [BUILD_DIR] [RUNS] [EVENTS_FILE]
set -euo pipefail
build=${1:-build}
runs=${2:-3}
events_out=${3:-}
tandem="$(cd "$build" && pwd)/bin/tandem"
work=$(mktemp -d /tmp/tandem-failover-bench-XXXXXX)
up_pid=""
agent_a=""
cleanup() {
  [[ -n "$agent_a" ]] && signal_cloud_a CONT
  if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then kill -INT "$up_pid"; wait "$up_pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

py() { /usr/bin/python3 -c "$@"; }
# cloud-a's agent and its descendants (mpirun puts each rank in a process
# group of its own, so a group signal would miss the workers).
tree() { local p; echo "$1"; for p in $(ps -o pid= --ppid "$1"); do tree "$p"; done; }
signal_cloud_a() { local pids; pids=$(tree "$agent_a"); kill "-$1" $pids 2>/dev/null || true; }
json() { py 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

start_up() {  # start_up HOME [up flags...]
  local home=$1
  shift
  mkdir -p "$home/samples"
  "$tandem" up --home "$home" --insecure --port 0 --wan-port 0 --slots 1 \
    --sample-log "$home/samples" "$@" >"$home/up.out" 2>&1 &
  up_pid=$!
  for ((i = 0; i < 400; i++)); do
    [[ -s "$home/coordinator" ]] && break
    kill -0 "$up_pid" 2>/dev/null || { cat "$home/up.out" >&2; exit 1; }
    sleep 0.3
  done
  coordinator=$(cat "$home/coordinator")
  agent_a=$(sed -n 's/^agent cloud-a *pid \([0-9]*\).*/\1/p' "$home/up.out")
}
stop_up() {
  signal_cloud_a CONT
  kill -INT "$up_pid"
  wait "$up_pid" || true
  up_pid=""
}
client() { "$tandem" "$@" --coordinator "$coordinator" --insecure; }
status() { client status "$1" --output json; }
wait_for() {  # wait_for JOB SECONDS EXPR
  local end=$((SECONDS + $2))
  until [[ $(status "$1" | json "$3") == True ]]; do
    ((SECONDS < end)) || { echo "bench: timed out waiting for $3" >&2; exit 1; }
    sleep 0.2
  done
}
spec() {  # spec NAME POOLS...
  local name=$1
  shift
  {
    echo "name: $name"
    echo "model: {arch: cnn}"
    echo "train: {epochs: 1, max_steps: 400, global_batch: 32, optimizer: sgd, lr: 0.05, seed: 3,"
    echo "        eval_every_steps: ${EVAL_EVERY:-0}}"
    echo "checkpoint: {every_steps: 50, keep: 3}"
    echo "exchange: {codec: none, digest_every_steps: 10}"
    echo "pools:"
    for pool in "$@"; do echo "  - $pool"; done
  } >"$work/$name.yaml"
  echo "$work/$name.yaml"
}
# Steps lost: steps a cloud had completed and computed again. By design the
# step a loss interrupted is computed again by the survivors (its update never
# happened); every other step computed twice by the same cloud was lost.
steps_lost() {  # steps_lost SAMPLES_DIR
  py '
import collections, glob, os, sys
lost = 0
for cloud in ("cloud-a", "cloud-b"):
    gens = collections.defaultdict(set)
    for path in glob.glob(os.path.join(sys.argv[1], cloud + "-*.log")):
        for line in open(path):
            step, gen = map(int, line.split()[:2])
            gens[step].add(gen)
    again = sum(1 for g in gens.values() if len(g) > 1)
    lost = max(lost, again - 1)
print(lost)
' "$1"
}

loss_run() {  # loss_run KIND (freeze | partition) -> one table row
  local kind=$1
  local home="$work/$kind-$2"
  if [[ $kind == partition ]]; then start_up "$home" --wan-delay 1; else start_up "$home"; fi
  local job
  job=$(client submit "$(spec "loss-$kind" '{cloud: cloud-a, workers: 1}' '{cloud: cloud-b, workers: 1}')" --output json | json 'd["job"]')
  wait_for "$job" 300 'd["step"] >= 100'
  local step_s
  step_s=$(status "$job" | json '32.0 / max(1e-9, d.get("samples_per_s", 0) or 1e-9)')
  if [[ $kind == partition ]]; then
    for port in $(sed -n 's/.*control 127.0.0.1:\([0-9]*\).*/\1/p' "$home/up.out"); do
      exec 3<>"/dev/tcp/127.0.0.1/$port"; echo "partition on" >&3; head -n1 <&3 >/dev/null; exec 3>&-
    done
  else
    signal_cloud_a STOP
  fi
  wait_for "$job" 300 'd["state"] == "RUNNING" and d["last_recover_s"] > 0'
  local s
  s=$(status "$job")
  local lost
  lost=$(steps_lost "$home/samples")
  echo "$s" | json "'| %s | %d | %.2f | %.2f | %.2f | %.3f | %.0f | %d |' % ('$kind', $2, d['last_detect_s'], d['last_recover_s'] - d['last_detect_s'], d['last_recover_s'], $step_s, d['last_recover_s'] / $step_s, $lost)"
  client cancel "$job" >/dev/null 2>&1 || true
  stop_up
}

echo "### Losing a cloud (runs: $runs; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| how | run | detection s | re-plan to next step s | loss to next step s | steady step s | recovery / step | steps lost |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for ((r = 1; r <= runs; r++)); do loss_run freeze "$r"; done
for ((r = 1; r <= runs; r++)); do loss_run partition "$r"; done

echo
echo "### Migration bytes"
echo
home="$work/migrate"
start_up "$home"
job=$(client submit "$(spec migrate '{cloud: cloud-a, workers: 1}')" --output json | json 'd["job"]')
wait_for "$job" 300 'd["state"] == "RUNNING" and d["step"] >= 100'
client migrate "$job" --to cloud-b >/dev/null
wait_for "$job" 300 'd["state"] == "RUNNING" and d["pools"][0]["cloud"] == "cloud-b" and d["step"] >= 200'
client migrate "$job" --to cloud-a >/dev/null
wait_for "$job" 300 'd["state"] in ("RUNNING", "SUCCEEDED") and d["pools"][0]["cloud"] == "cloud-a"'
echo "| migration | target had | step copied | bytes sent |"
echo "| --- | --- | --- | --- |"
status "$job" | json '"\n".join("| %s | %s | %s | %s |" % ((("cloud-a -> cloud-b", "nothing of the job (full)") if i == 0 else ("cloud-b -> cloud-a", "its own older checkpoints of the job (incremental)")) + tuple(__import__("re").search(r"step (\d+) from .*replicated_bytes=(\d+)", e["reason"]).groups())) for i, e in enumerate([e for e in d["events"] if "replicated_bytes=" in e["reason"]]))'
stop_up

if [[ -n "$events_out" ]]; then
  home="$work/accuracy"
  start_up "$home"
  job=$(EVAL_EVERY=50 client submit "$(EVAL_EVERY=50 spec accuracy '{cloud: cloud-a, workers: 1}' '{cloud: cloud-b, workers: 1}')" --output json | json 'd["job"]')
  wait_for "$job" 600 'd["step"] >= 200'
  signal_cloud_a STOP
  failover_step=$(status "$job" | json 'd["step"]')
  wait_for "$job" 300 'd["state"] == "RUNNING" and d["last_recover_s"] > 0'
  wait_for "$job" 300 "d['step'] >= $failover_step + 60"
  signal_cloud_a CONT
  wait_for "$job" 900 'd["state"] in ("SUCCEEDED", "FAILED")'
  client logs "$job" --output json | py '
import json, re, sys
seen = {}
for line in sys.stdin:
    text = json.loads(line).get("text", "")
    m = re.match(r"step (\d+): test accuracy ([0-9.]+)", text) or re.match(r"done: (\d+) steps, test accuracy ([0-9.]+)", text)
    if m:
        seen.setdefault(int(m.group(1)), float(m.group(2)))
with open(sys.argv[1], "w") as out:
    for step in sorted(seen):
        out.write(json.dumps({"event": "eval", "step": step, "test_accuracy": seen[step]}) + "\n")
    out.write(json.dumps({"event": "failover", "step": int(sys.argv[2])}) + "\n")
' "$events_out" "$failover_step"
  stop_up
fi
