#!/usr/bin/env bash
# Mutation proof for the adversarial tests (scripts/mutation_check.py does the work):
# each mutation removes exactly one defence in a copy of the tree; the tests that claim to prove
# it must fail by their hostile assertion, after a baseline on the unmutated tree and an honest
# run on the mutated one. Exits non-zero when a mutant survives, a mutation is broken or stale,
# or a tier could not run.
#
#   scripts/mutation-check.sh              every mutation
#   scripts/mutation-check.sh --list       what each one removes
#   scripts/mutation-check.sh landlock     one or more by name
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/mutation_check.py" "$@"
