#!/usr/bin/env bash
# NBD sequential read throughput: `nbdcopy nbd+unix://… /dev/null` of a served snapshot against
# `imgarc restore SNAP -o - > /dev/null` of the same snapshot, one run each, side by side.
# The disk is BENCH_MIB MiB (default 512): three quarters incompressible data, a quarter holes.
# Needs nbdcopy (libnbd-bin). IMGARC_BIN (default target/release/imgarc).
set -euo pipefail
BIN=${IMGARC_BIN:-$(dirname "$0")/../target/release/imgarc}
MIB=${BENCH_MIB:-512}
command -v nbdcopy >/dev/null || { echo "skipped: nbdcopy is not installed (libnbd-bin)"; exit 0; }
WORK=$(mktemp -d)
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
export IMGARC_PASSWORD=bench-password IMGARC_CACHE_DIR=$WORK/cache
IMG=$WORK/vm.raw
truncate -s $((MIB << 20)) "$IMG"
# Data in 16 MiB runs, every fourth run left a hole.
for ((i = 0; i < MIB / 16; i++)); do
    if ((i % 4 != 3)); then
        head -c $((16 << 20)) /dev/urandom | dd of="$IMG" bs=1M seek=$((i * 16)) conv=notrunc status=none
    fi
done
secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.2f}")' "$1"; }
now() { date +%s.%N; }

"$BIN" -q -r "$WORK/repo" init
SNAP=$("$BIN" --json -r "$WORK/repo" archive "$IMG" --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot"])')

t=$(now)
"$BIN" -q -r "$WORK/repo" restore "$SNAP" -o - > /dev/null
restore_s=$(secs "$t")

SOCK=$WORK/nbd.sock
"$BIN" --json -r "$WORK/repo" serve-nbd "$SNAP" --listen "unix:$SOCK" > "$WORK/ready.json" &
SERVER=$!
for _ in $(seq 1 600); do [ -s "$WORK/ready.json" ] && break; sleep 0.1; done
URI=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["uri"])' "$WORK/ready.json")
t=$(now)
nbdcopy "$URI" null:
nbd_s=$(secs "$t")
# nbdcopy skips what block status calls holes; a second run reads every byte (no extents).
t=$(now)
nbdcopy --no-extents "$URI" null:
nbd_all_s=$(secs "$t")

python3 - "$MIB" "$restore_s" "$nbd_s" "$nbd_all_s" <<'PY'
import sys
mib, restore, nbd, nbd_all = int(sys.argv[1]), *map(float, sys.argv[2:])
rate = lambda s: mib / s if s > 0 else float("inf")
print(f"disk {mib} MiB (3/4 data, 1/4 holes)")
print(f"restore -o - > /dev/null        {restore:7.2f} s  {rate(restore):8.1f} MiB/s")
print(f"nbdcopy URI null: (extents)     {nbd:7.2f} s  {rate(nbd):8.1f} MiB/s  ratio nbd/restore {restore / nbd:.2f}")
print(f"nbdcopy --no-extents URI null:  {nbd_all:7.2f} s  {rate(nbd_all):8.1f} MiB/s  ratio nbd/restore {restore / nbd_all:.2f}")
PY
