#!/usr/bin/env bash
# The main job, end to end, on the embedded simulated region (no AWS account):
# a 3-node spot cluster, the digits CV splits on every host, the classic SVC
# grid search on the cluster's engines, the report and plots, then teardown.
source "$(dirname "$0")/setup.sh"
export PROVISION_STATE_DIR="${PROVISION_STATE_DIR:-$PWD/.demo-state}"
out="${1:-$PWD/demo-results}"
rm -rf "$out"  # a fresh search each time (a re-run of `provision run` would resume from its journal)
cfg="$PROVISION_STATE_DIR/cluster.yaml"

cleanup() {
  provision down demo --yes --config "$cfg" || true
  provision sim down || true
}
trap cleanup EXIT

mkdir -p "$PROVISION_STATE_DIR"
provision init --path "$cfg" --force >/dev/null
provision sim up
provision up --config "$cfg" --name demo -n 3 --spot-bid 0.10 --engines-per-node 1
provision status demo
provision put-data demo digits --cv shuffle --n-splits 5 --test-size 0.25 --seed 42
provision run demo gridsearch --data digits --model sklearn.svm.SVC \
  --param 'C=logspace(-1,2,4)' --param 'gamma=logspace(-4,0,5)' --out "$out"
