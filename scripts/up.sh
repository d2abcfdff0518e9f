#!/usr/bin/env bash
# The main job: set up what is missing, then bring up the stack with the example models.
#   scripts/up.sh         the default stack (the loader has no network at all)
#   scripts/up.sh --pod   the Kubernetes pod topology (compose.pod.yaml, docs/kubernetes.md)
set -euo pipefail
cd "$(dirname "$0")/.."
hint=""
if [ "${1:-}" = "--pod" ]; then
  export COMPOSE_FILE=compose.yaml:compose.pod.yaml   # read by docker compose
  hint="COMPOSE_FILE=$COMPOSE_FILE "
fi
scripts/setup.sh
printf '\n==> Starting the stack (docker compose up --wait)\n'
docker compose up -d --wait
http=${MLSERVER_HTTP_PORT:-8080}
cat <<TXT

Ready.
  MLServer REST     http://127.0.0.1:$http   (e.g. POST /v2/repository/index, /v2/repository/models/good-model/load)
  MLServer gRPC     127.0.0.1:${MLSERVER_GRPC_PORT:-8081}
  Metrics           http://127.0.0.1:${MLSERVER_METRICS_PORT:-8082}/metrics
  Loader (gRPC)     unix:///run/loader/loader.sock inside the stack (docker compose exec loader ...)
Replay the walkthrough:  ${hint}examples/walkthrough.sh
Stop:                    ${hint}docker compose down      (add -v to rebuild the example models)
TXT
