#!/usr/bin/env bash
# Competing load for a busy-machine run: two CPU hogs (one per core here) and a process that
# keeps 1 GiB resident and rewrites it, so the tests also meet memory pressure and a cold cache.
#   scripts/busy.sh start    start them (prints what runs); their pids go to .cache/busy.pids
#   scripts/busy.sh stop     stop them
set -euo pipefail
cd "$(dirname "$0")/.."
PIDS=.cache/busy.pids
mkdir -p .cache
case "${1:-}" in
start)
  [ ! -s "$PIDS" ] || "$0" stop
  : >"$PIDS"
  for _ in 1 2; do
    # Their output goes nowhere: they must not hold the caller's stdout (a $(...) waits for it).
    (exec python3 -c 'while True: pass' </dev/null >/dev/null 2>&1) & echo $! >>"$PIDS"
  done
  (exec python3 -c '
import time
block = bytearray(1 << 30)
while True:
    for i in range(0, len(block), 4096):
        block[i] = (block[i] + 1) & 0xFF
    time.sleep(0.5)
' </dev/null >/dev/null 2>&1) & echo $! >>"$PIDS"
  echo "2 CPU hogs and a 1 GiB memory writer (pids $(tr '\n' ' ' <"$PIDS"))" ;;
stop)
  [ -f "$PIDS" ] && xargs -r kill 2>/dev/null <"$PIDS" || true
  rm -f "$PIDS" ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
