#!/usr/bin/env bash
# Glance archive verification against its floor, in one run: `openssl dgst -sha512` over the image
# bytes (page cache) vs `imgarc archive glance:ID` of an image whose chunks are all stored already
# (a second archive: download + sha512 check + chunking + dedup, nothing new written). Prints both
# (best of BENCH_REPS), curl's download of the same image, and the ratio archive / openssl
# (target ≤ 1.2).
# Needs a noauth Glance (`source /tmp/imgarc-servers.env` or `source ci/openstack.sh`: GLANCE_URL),
# curl and openssl. IMGARC_BIN (default target/release/imgarc), BENCH_MIB (default 1024: the
# corpus's images, IMGARC_CORPUS, then random bytes up to that size), BENCH_IMAGE (use this file
# instead), BENCH_REPS (default 3).
set -euo pipefail
BIN=${IMGARC_BIN:-$(dirname "$0")/../target/release/imgarc}
MIB=${BENCH_MIB:-1024}
REPS=${BENCH_REPS:-3}
: "${GLANCE_URL:?source /tmp/imgarc-servers.env (or ci/openstack.sh) first}"
for t in curl openssl python3; do command -v $t >/dev/null || { echo "skipped: $t is not installed"; exit 0; }; done
[ -x "$BIN" ] || { echo "no imgarc binary at $BIN: cargo build --release (or set IMGARC_BIN)" >&2; exit 1; }
WORK=$(mktemp -d)
IMAGE_ID=
cleanup() {
    [ -z "$IMAGE_ID" ] || curl -fsS -X DELETE "$GLANCE_URL/v2/images/$IMAGE_ID" >/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
export IMGARC_PASSWORD=bench-password IMGARC_CACHE_DIR=$WORK/cache

IMG=${BENCH_IMAGE:-}
if [ -z "$IMG" ]; then
    IMG=$WORK/bench.raw
    corpus=${IMGARC_CORPUS:-$(dirname "$0")/../target/ci-corpus}
    # Real disk content (filesystems, zeros, qcow2 files) where the corpus is at hand, then random bytes.
    if [ -d "$corpus/vm-a" ]; then cat "$corpus"/vm-a/night-0[01].{raw,qcow2} | head -c $((MIB << 20)) > "$IMG"; else : > "$IMG"; fi
    have=$(stat -c %s "$IMG")
    [ "$have" -ge $((MIB << 20)) ] || head -c $(((MIB << 20) - have)) /dev/urandom >> "$IMG"
fi
SIZE=$(stat -c %s "$IMG")

secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.3f}")' "$1"; }
now() { date +%s.%N; }
best() { tr ' ' '\n' | grep . | sort -n | head -1; }

IMAGE_ID=$(curl -fsS -X POST "$GLANCE_URL/v2/images" -H 'Content-Type: application/json' \
    -d '{"name": "imgarc-bench-glance-digest", "disk_format": "raw", "container_format": "bare"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -fsS -X PUT "$GLANCE_URL/v2/images/$IMAGE_ID/file" -H 'Content-Type: application/octet-stream' -T "$IMG" >/dev/null
for _ in $(seq 600); do
    status=$(curl -fsS "$GLANCE_URL/v2/images/$IMAGE_ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [ "$status" = active ] && break
    sleep 0.5
done
[ "$status" = active ] || { echo "image $IMAGE_ID is $status, not active" >&2; exit 1; }
record_sha=$(curl -fsS "$GLANCE_URL/v2/images/$IMAGE_ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["os_hash_value"])')

"$BIN" -q -r "$WORK/repo" init
# First archive: stores the chunks; the timed ones find them all stored.
"$BIN" --json --glance-url "$GLANCE_URL" -r "$WORK/repo" archive "glance:$IMAGE_ID" > "$WORK/first.json"

ossl=() arch=() dl=()
for _ in $(seq "$REPS"); do
    t=$(now); sha=$(openssl dgst -sha512 -r "$IMG" | cut -d' ' -f1); ossl+=("$(secs "$t")")
    [ "$sha" = "$record_sha" ] || { echo "openssl sha512 $sha differs from the record's $record_sha" >&2; exit 1; }
    t=$(now); curl -fsS -o /dev/null "$GLANCE_URL/v2/images/$IMAGE_ID/file"; dl+=("$(secs "$t")")
    t=$(now); "$BIN" --json --glance-url "$GLANCE_URL" -r "$WORK/repo" archive "glance:$IMAGE_ID" > "$WORK/again.json"; arch+=("$(secs "$t")")
done
python3 - "$WORK/again.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
assert a["new_chunks"] == 0, f"the timed archive stored new chunks: {a}"
assert a["verified_digests"] == ["sha512"], f"verified {a['verified_digests']}"
PY
o=$(echo "${ossl[*]}" | best); a=$(echo "${arch[*]}" | best); d=$(echo "${dl[*]}" | best)
python3 - "$SIZE" "$o" "$a" "$d" "$REPS" <<'PY'
import sys
size, o, a, d, reps = int(sys.argv[1]), *map(float, sys.argv[2:5]), sys.argv[5]
mb = lambda s: f"{size / s / 1e6:.0f} MB/s"
print(f"image: {size / 1e9:.2f} GB, best of {reps}")
print(f"openssl dgst -sha512 (page cache)    {o:6.2f} s  {mb(o)}")
print(f"curl download to /dev/null           {d:6.2f} s  {mb(d)}")
print(f"imgarc archive glance:ID (stored)    {a:6.2f} s  {mb(a)}  (verified: sha512)")
print(f"ratio archive / openssl              {a / o:6.2f}x  (target <= 1.2x)")
PY
