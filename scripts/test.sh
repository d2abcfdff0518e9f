#!/usr/bin/env bash
# The whole test suite (unit, integration, container, e2e), after the same set-up as scripts/up.sh.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
printf '\n==> Running the tests\n'
exec .venv/bin/pytest "$@"
