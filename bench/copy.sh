#!/usr/bin/env bash
# Copy throughput local → Ceph RGW (loopback): `imgarc copy` against `restic copy` of the same
# image, in one run; then one incremental night: the bytes `imgarc copy` sends against that
# night's `stored_bytes_added` in the source.
# Needs the servers of ci/objectstore.sh (`source /tmp/imgarc-servers.env` or `. ci/objectstore.sh`)
# and restic on PATH. IMGARC_BIN (default target/release/imgarc), BENCH_MIB (default 256).
set -euo pipefail
BIN=${IMGARC_BIN:-$(dirname "$0")/../target/release/imgarc}
MIB=${BENCH_MIB:-256}
: "${IMGARC_RGW_ENDPOINT:?source /tmp/imgarc-servers.env first}"
command -v restic >/dev/null || { echo "skipped: restic is not installed"; exit 0; }
WORK=$(mktemp -d)
export AWS_ACCESS_KEY_ID=$IMGARC_RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$IMGARC_RGW_SECRET_KEY AWS_REGION=us-east-1
export IMGARC_PASSWORD=bench-password IMGARC_CACHE_DIR=$WORK/cache
export RESTIC_PASSWORD=bench-password RESTIC_FROM_PASSWORD=bench-password RESTIC_CACHE_DIR=$WORK/restic-cache
RUN=bench-$(date +%s)-$$
S3_IMGARC="s3:$IMGARC_RGW_ENDPOINT/$IMGARC_RGW_BUCKET/$RUN-imgarc"
S3_RESTIC="s3:$IMGARC_RGW_ENDPOINT/$IMGARC_RGW_BUCKET/$RUN-restic"
cleanup() {
    rm -rf "$WORK"
    # Both copies are removed from the bucket again (disk is limited), where the aws CLI is at hand.
    if command -v aws >/dev/null; then
        for p in "$RUN-imgarc" "$RUN-restic"; do
            AWS_DEFAULT_REGION=us-east-1 aws --endpoint-url "$IMGARC_RGW_ENDPOINT" s3 rm --recursive --quiet "s3://$IMGARC_RGW_BUCKET/$p/" || true
        done
    fi
}
trap cleanup EXIT
IMG=$WORK/vm.raw
# Incompressible data (compression would flatter neither tool differently).
head -c $((MIB << 20)) /dev/urandom > "$IMG"

secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.2f}")' "$1"; }
now() { date +%s.%N; }
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$1" "$2"; }

"$BIN" -q -r "$WORK/src" init
"$BIN" -q -r "$S3_IMGARC" init
"$BIN" --json -r "$WORK/src" archive "$IMG" --name vm > "$WORK/a1.json"
restic -q -r "$WORK/rsrc" init >/dev/null
restic -q -r "$S3_RESTIC" init >/dev/null
(cd "$WORK" && restic -q -r "$WORK/rsrc" backup vm.raw >/dev/null)

t=$(now); "$BIN" --json -r "$WORK/src" copy --to "$S3_IMGARC" > "$WORK/c1.json"; imgarc_s=$(secs "$t")
t=$(now); restic -q -r "$S3_RESTIC" copy --from-repo "$WORK/rsrc" >/dev/null; restic_s=$(secs "$t")

# One night: 8 scattered 1 MiB regions change.
python3 - "$IMG" <<'PY'
import os, sys
with open(sys.argv[1], 'r+b') as f:
    size = os.fstat(f.fileno()).st_size
    for i in range(8):
        f.seek((i * 7919 * (1 << 20) // 8) % (size - (1 << 20)))
        f.write(os.urandom(1 << 20))
PY
"$BIN" --json -r "$WORK/src" archive "$IMG" --name vm > "$WORK/a2.json"
(cd "$WORK" && restic -q -r "$WORK/rsrc" backup vm.raw >/dev/null)
t=$(now); "$BIN" --json -r "$WORK/src" copy --to "$S3_IMGARC" > "$WORK/c2.json"; imgarc2_s=$(secs "$t")
t=$(now); restic -q -r "$S3_RESTIC" copy --from-repo "$WORK/rsrc" >/dev/null; restic2_s=$(secs "$t")

mibs() { python3 -c "print(f'{$MIB/float(\"$1\"):.1f}')"; }
echo "image: $MIB MiB incompressible, local → RGW $IMGARC_RGW_ENDPOINT, imgarc $("$BIN" --version), $(restic version | cut -d' ' -f1-2)"
echo "night 1 copy:  imgarc ${imgarc_s}s ($(mibs "$imgarc_s") MiB/s, sent $(field "$WORK/c1.json" bytes_sent) B)   restic ${restic_s}s ($(mibs "$restic_s") MiB/s)"
echo "night 2 copy:  imgarc ${imgarc2_s}s   restic ${restic2_s}s"
echo "night 2: imgarc copy bytes_sent $(field "$WORK/c2.json" bytes_sent), chunks_sent $(field "$WORK/c2.json" chunks_sent); the source's stored_bytes_added $(field "$WORK/a2.json" stored_bytes_added), new_chunks $(field "$WORK/a2.json" new_chunks)"
