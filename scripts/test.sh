#!/usr/bin/env bash
# The test suite after the same set-up as scripts/up.sh. Extra arguments go to pytest:
#   scripts/test.sh                      every tier (unit, integration, container, e2e)
#   scripts/test.sh -m unit              one tier; unit and integration need no Docker, so the
#   scripts/test.sh tests/integration    set-up then installs only the venv (setup.sh --no-docker)
set -euo pipefail
cd "$(dirname "$0")/.."

# Docker is needed unless the selection names only the unit/integration tiers (by -m or path).
needs_docker=1
selection=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "-m" ]; then selection="$selection $arg"
  elif [[ "$arg" == tests/* ]]; then selection="$selection ${arg#tests/}"
  fi
  prev="$arg"
done
if [ -n "$selection" ]; then
  needs_docker=0
  for word in $selection; do
    case "$word" in
      unit|unit/*|integration|integration/*|or|and) ;;
      *) needs_docker=1 ;;
    esac
  done
fi

if [ "$needs_docker" = 1 ]; then scripts/setup.sh; else scripts/setup.sh --no-docker; fi
printf '\n==> Running the tests\n'
exec .venv/bin/pytest "$@"
