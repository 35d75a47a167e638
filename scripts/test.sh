#!/usr/bin/env bash
# Run the whole test suite (unit + end-to-end on the simulated region).
#
# With no selection of tests, two pytest processes run side by side: the unit
# tests (CPU-bound, one core) and the end-to-end tests (which mostly wait on
# simulated hosts), so the whole suite takes about as long as the longer half.
# The e2e output streams; the unit tests' output follows when both are done.
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

unit_log=$(mktemp -t provision-unit.XXXXXX)
pytest "$@" -m "not e2e" >"$unit_log" 2>&1 &
unit_pid=$!
trap 'kill "$unit_pid" 2>/dev/null; rm -f "$unit_log"' EXIT
set +e
pytest "$@" -m e2e
e2e_rc=$?
wait "$unit_pid"
unit_rc=$?
set -e
echo
echo "=== unit tests (ran beside the end-to-end tests) ==="
cat "$unit_log"
echo "=== exit status: e2e $e2e_rc, unit $unit_rc ==="
[ "$e2e_rc" = 0 ] && [ "$unit_rc" = 0 ]
