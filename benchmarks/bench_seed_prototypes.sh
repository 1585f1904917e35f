#!/bin/bash
# The seed's protocol (method=vproto_seed): what the passive reads off the second prototypes it receives, with DP
# prototypes at several label-change budgets and in clear (privacy=none), adult 5 % aligned, 20 rounds.
# Usage: benchmarks/bench_seed_prototypes.sh OUT_DIR TAG "SEEDS" [overrides...]
#   e.g. benchmarks/bench_seed_prototypes.sh /tmp/seed e05 "0 1 2"            (the preset: privacy=dp, epsilon 0.5)
#        benchmarks/bench_seed_prototypes.sh /tmp/seed e1 "0" privacy.target_epsilon=1
#        benchmarks/bench_seed_prototypes.sh /tmp/seed none "0 1 2" privacy=none
# Each run records what the passive holds (audit.record=true) and is scored by the audit at its end; one JSON line
# per run goes to OUT_DIR/seed_prototypes.jsonl (BENCHMARKS.md §12).
set -euo pipefail
out=$1; tag=$2; seeds=$3; shift 3
mkdir -p "$out"
for s in $seeds; do
  d="$out/${tag}_s$s"; rm -rf "$d"
  python run_simulation.py engine=inprocess dataset=adult dataset.aligned_fraction=0.05 seed="$s" method=vproto_seed \
    audit.record=true "$@" hydra.run.dir="$d" > "$d.log" 2>&1
  python - "$d" "$tag" "$s" "$*" >> "$out/seed_prototypes.jsonl" <<'PY'
import json, sys
d, tag, seed, overrides = sys.argv[1:5]
r = json.load(open(d + "/results.json"))
a, p = r["audit"], r.get("privacy", {})
keys = ["prototype_nearest_auc", "prototype_nearest_last_auc", "prototype_inversion_auc", "known100_features_auc",
        "known100_prototype_auc", "test_previous_rounds", "prototype_rounds"]
print(json.dumps({"tag": tag, "seed": int(seed), "overrides": overrides, "accuracy": r["final"]["accuracy"],
                  "epsilon": p.get("epsilon"), "noise_multiplier": p.get("noise_multiplier"),
                  **{k: a.get(k) for k in keys}}))
PY
done
