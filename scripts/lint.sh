#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff (lint) and mypy (types), both configured in
# pyproject.toml. Needs the venv (scripts/setup.sh --no-docker).
set -euo pipefail
cd "$(dirname "$0")/.."
printf '\n==> ruff\n'
.venv/bin/ruff check .
printf '\n==> mypy\n'
.venv/bin/mypy
