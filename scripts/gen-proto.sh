#!/usr/bin/env bash
# Regenerate the gRPC stubs after editing loader/proto/v1/loader.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
  loader/proto/v1/loader.proto
