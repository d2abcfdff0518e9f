#!/usr/bin/env bash
# The test suite after the same set-up as scripts/up.sh. Extra arguments go to pytest:
#   scripts/test.sh                      every tier (unit, integration, container, e2e)
#   scripts/test.sh -m unit              one tier; unit and integration need no Docker, so the
#   scripts/test.sh tests/integration    set-up then installs only the venv (setup.sh --no-docker)
#   scripts/test.sh --busy [ARGS]        the same, with two CPU hogs and a memory-hungry process
#                                        running beside the tests for their whole duration (a
#                                        busy CI runner or build host); CI runs the tiers where
#                                        concurrency matters this way
set -euo pipefail
cd "$(dirname "$0")/.."

busy=0
if [ "${1:-}" = "--busy" ]; then busy=1; shift; fi

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
if [ "$busy" = 1 ]; then
  printf '\n==> Competing load: %s\n' "$(scripts/busy.sh start)"
  trap 'scripts/busy.sh stop' EXIT
  printf '\n==> Running the tests beside it\n'
  .venv/bin/pytest "$@"
else
  printf '\n==> Running the tests\n'
  exec .venv/bin/pytest "$@"
fi
