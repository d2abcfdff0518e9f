#!/usr/bin/env bash
# Replays the walkthrough against the running compose stack (`scripts/up.sh` first):
# index, load good-model and predict, load naive-model (the danger), load tampered-model
# (refused), and check where pwnd.txt does and does not appear. For the pod topology
# (`scripts/up.sh --pod`): COMPOSE_FILE=compose.yaml:compose.pod.yaml examples/walkthrough.sh
set -uo pipefail
cd "$(dirname "$0")/.."
URL="http://127.0.0.1:${MLSERVER_HTTP_PORT:-8080}"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
post() { curl -s -w '\nHTTP %{http_code}\n' -X POST -H 'Content-Type: application/json' "$@"; }

say "list the models in the repository"
post "$URL/v2/repository/index" -d '{}'

say "load good-model (signed; runtime.SigstoreModel)"
post "$URL/v2/repository/models/good-model/load"

say "predict the last 4 digits of the scikit-learn digits data set"
payload=$(docker compose exec -T loader python -c "
import json; from sklearn import datasets
d = datasets.load_digits(); x = d.images.reshape((len(d.images), -1))[-4:]
print(json.dumps({'inputs': [{'name': 'x', 'shape': list(x.shape), 'datatype': 'FP64', 'data': x.flatten().tolist()}]}))
print('expected:', d.target[-4:].tolist(), file=__import__('sys').stderr)")
post "$URL/v2/models/good-model/infer" -d "$payload"

say "load naive-model (tampered file; plain mlserver_sklearn.SKLearnModel)"
post "$URL/v2/repository/models/naive-model/load"
say "cat pwnd.txt inside the MLServer container: the pickle ran in the serving process"
docker compose exec -T mlserver sh -c 'head -3 pwnd.txt && echo "... ($(wc -l < pwnd.txt) lines of environment)" && rm pwnd.txt'

say "load tampered-model (the same tampered file; runtime.SigstoreModel)"
post "$URL/v2/repository/models/tampered-model/load"
say "ls pwnd.txt (MLServer and loader containers)"
docker compose exec -T mlserver ls pwnd.txt
docker compose exec -T loader sh -c 'ls pwnd.txt /pwnd.txt /tmp/pwnd.txt 2>&1'
