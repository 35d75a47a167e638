#!/usr/bin/env bash
# Run the whole test suite (unit + end-to-end on the simulated region).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
source "$(dirname "$0")/setup.sh"
ruff check .
exec pytest "$@"
