#!/usr/bin/env bash
# What evaluation costs a two-cloud job, before and after the test set was
# sharded across pools, in one run: the same job (the Fashion-MNIST CNN on
# cloud-a and cloud-b, one rank each, `tandem train` on this machine, global
# batch 128, the 10,000 test images every EVAL_EVERY steps) once with
# `--eval-per-pool` (each pool evaluates the whole test set itself, as tandem
# did before) and once sharded (each rank of each pool evaluates its share
# and the leaders sum the results in one exchange round). Reports the mean
# wall time of an evaluation as the leader of pool 0 measured it (the eval
# events' eval_s), the job's wall time, and the ratios.
# Usage: bench/eval_cost.sh [BUILD_DIR] [STEPS] [EVAL_EVERY]
set -euo pipefail
build=${1:-build}
steps=${2:-200}
every=${3:-50}
tandem="$(cd "$build" && pwd)/bin/tandem"
work=$(mktemp -d /tmp/tandem-eval-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/spec.yaml" <<SPEC
name: eval-cost
model: {arch: cnn}
train: {epochs: 1, global_batch: 128, optimizer: sgd, lr: 0.05, momentum: 0.9, seed: 1,
        eval_every_steps: $every}
exchange: {codec: powersgd, rank: 2}
pools:
  - {cloud: cloud-a, workers: 1}
  - {cloud: cloud-b, workers: 1}
SPEC
run() {  # run NAME [flags]
  local name=$1
  shift
  local start=$SECONDS
  "$tandem" train "$work/spec.yaml" --store "$work/$name-store" --insecure --max-steps "$steps" \
    --events "$work/$name.jsonl" --output json "$@" >"$work/$name.out" 2>"$work/$name.err" ||
    { cat "$work/$name.err" >&2; exit 1; }
  echo $((SECONDS - start)) >"$work/$name.wall"
}
run per-pool --eval-per-pool
run sharded
/usr/bin/python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
def figures(name):
    evals = [json.loads(l) for l in open(os.path.join(work, name + ".jsonl"))]
    evals = [e for e in evals if e.get("event") == "eval" and "eval_s" in e]
    wall = float(open(os.path.join(work, name + ".wall")).read())
    acc = evals[-1]["test_accuracy"] if evals else float("nan")
    return sum(e["eval_s"] for e in evals) / len(evals), len(evals), wall, acc
before = figures("per-pool")
after = figures("sharded")
print("| evaluation | evaluations | mean eval s | job wall s | final test accuracy |")
print("| --- | --- | --- | --- | --- |")
for label, f in (("per pool (before)", before), ("sharded across pools (after)", after)):
    print("| %s | %d | %.2f | %.0f | %.4f |" % (label, f[1], f[0], f[2], f[3]))
print()
print("sharded / per pool: eval time %.2f, job wall time %.2f" % (after[0] / before[0], after[2] / before[2]))
PY
