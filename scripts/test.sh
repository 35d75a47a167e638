#!/usr/bin/env bash
# Run the whole test suite (unit + end-to-end on the simulated region).
#
# With no selection of tests, four pytest processes run side by side: the unit
# tests (CPU-bound, one core, niced) and three groups of end-to-end tests (which
# mostly wait on simulated hosts), so the suite takes about as long as its longest part.
# The first e2e group's output streams; the others follow when all are done.
# Other arguments (e.g. -q) go to both. With a selection (-m, -k, a path) or
# PROVISION_TEST_SERIAL=1, one plain pytest run: `bash scripts/test.sh -m "not e2e"`.
source "$(dirname "$0")/setup.sh"
ruff check .

selected=0
for arg in "$@"; do
  case "$arg" in
    -m* | -k* | tests* | *.py | *.py::*) selected=1 ;;
  esac
done
if [ "$selected" = 1 ] || [ "${PROVISION_TEST_SERIAL:-0}" = 1 ]; then
  exec pytest "$@"
fi

# The e2e half in three processes, each with a simulated region of its own
# (PROVISION_SIM_ID: its own bridge, subnet and state); groups A and C are named,
# group B is everything else marked e2e (new modules land there). The e2e tests
# mostly wait on simulated hosts (AWS's pending and boot times), so a third group
# uses idle cores; the unit tests, CPU-bound and not timing-sensitive, run niced
# so the e2e tests' waits are not starved.
sim_a=${PROVISION_SIM_ID:-0}
sim_b=${PROVISION_SIM_ID_B:-$(((sim_a + 1) % 10))}
sim_c=${PROVISION_SIM_ID_C:-$(((sim_a + 2) % 10))}
# Balanced by time (about 10 min each on a 2-core machine beside the unit tests).
group_a=(tests/test_e2e.py tests/test_ansible.py tests/test_bench.py tests/test_payload_e2e.py)
group_c=(tests/test_recovery_e2e.py tests/test_autostop_e2e.py tests/test_images_e2e.py
         tests/test_fanout_e2e.py tests/test_commands_e2e.py tests/test_put_data_disk.py)
ignore_ac=("${group_a[@]/#/--ignore=}" "${group_c[@]/#/--ignore=}")

logs=$(mktemp -d -t provision-tests.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$logs"' EXIT
nice -n 10 pytest "$@" -m "not e2e" >"$logs/unit" 2>&1 &
pids+=($!)
PROVISION_SIM_ID=$sim_b pytest "$@" -m e2e --durations=5 tests "${ignore_ac[@]}" >"$logs/e2e-b" 2>&1 &
pids+=($!)
PROVISION_SIM_ID=$sim_c pytest "$@" -m e2e --durations=5 "${group_c[@]}" >"$logs/e2e-c" 2>&1 &
pids+=($!)
set +e
PROVISION_SIM_ID=$sim_a pytest "$@" -m e2e --durations=5 "${group_a[@]}"
a_rc=$?
wait "${pids[0]}"
unit_rc=$?
wait "${pids[1]}"
b_rc=$?
wait "${pids[2]}"
c_rc=$?
set -e
for part in e2e-b e2e-c unit; do
  echo
  echo "=== $part (ran beside the run above) ==="
  cat "$logs/$part"
done
echo "=== exit status: e2e (A) $a_rc, e2e (B) $b_rc, e2e (C) $c_rc, unit $unit_rc ==="
[ "$a_rc" = 0 ] && [ "$b_rc" = 0 ] && [ "$c_rc" = 0 ] && [ "$unit_rc" = 0 ]
