#!/usr/bin/env bash
# Guest file access against restoring the image: `imgarc cat` of a 100 MiB file and `imgarc
# extract` of a tree (BENCH_TREE_MIB, default 256 MiB: what runs in a few minutes on a 2-core
# machine; the issue's 1 GiB with BENCH_TREE_MIB=1024) out of a 1 GiB ext4 image archived as
# qcow2, against `imgarc restore` of the whole image followed by `debugfs -R "dump ..."` /
# `debugfs -R "rdump ..."`. One run each; prints seconds, ratios and bytes_read.
# Needs mke2fs, debugfs, qemu-img. IMGARC_BIN (default target/release/imgarc).
set -euo pipefail
BIN=${IMGARC_BIN:-$(dirname "$0")/../target/release/imgarc}
TREE_MIB=${BENCH_TREE_MIB:-256}
for t in mke2fs debugfs qemu-img; do command -v $t >/dev/null || { echo "skipped: $t is not installed"; exit 0; }; done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export IMGARC_PASSWORD=bench-password IMGARC_CACHE_DIR=$WORK/cache
secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.2f}")' "$1"; }
now() { date +%s.%N; }
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$1" "$2"; }

# The source: one 100 MiB file and a tree of many files (1 KiB .. 1 MiB, incompressible).
mkdir -p "$WORK/src/tree"
head -c $((100 << 20)) /dev/urandom > "$WORK/src/big.bin"
python3 - "$WORK/src/tree" "$TREE_MIB" <<'PY'
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
random.seed(1); left = mib << 20; n = 0
while left > 0:
    d = os.path.join(root, f"d{n // 200:03d}"); os.makedirs(d, exist_ok=True)
    size = min(left, random.choice([1024, 8192, 65536, 262144, 1 << 20]))
    with open(os.path.join(d, f"f{n:05d}"), "wb") as f: f.write(os.urandom(size))
    left -= size; n += 1
print(f"tree: {n} files, {mib} MiB")
PY
truncate -s 1G "$WORK/fs.raw"
mke2fs -q -t ext4 -d "$WORK/src" "$WORK/fs.raw"
qemu-img convert -f raw -O qcow2 "$WORK/fs.raw" "$WORK/fs.qcow2"
rm "$WORK/fs.raw"
"$BIN" -q -r "$WORK/repo" init
SNAP=$("$BIN" --json -r "$WORK/repo" archive "$WORK/fs.qcow2" --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot"])')

t=$(now); "$BIN" --json -r "$WORK/repo" cat "$SNAP" /big.bin > "$WORK/big.out" 2> "$WORK/cat.json"; CAT=$(secs "$t")
cmp "$WORK/big.out" "$WORK/src/big.bin"; rm "$WORK/big.out"
t=$(now); "$BIN" --json -r "$WORK/repo" extract "$SNAP" /tree -o "$WORK/x" > "$WORK/extract.json"; EXTRACT=$(secs "$t")
diff -r "$WORK/src/tree" "$WORK/x/tree" >/dev/null; rm -rf "$WORK/x"

t=$(now); "$BIN" -q -r "$WORK/repo" restore "$SNAP" -o "$WORK/r.raw" --disk-format raw; RESTORE=$(secs "$t")
t=$(now); debugfs -R "dump /big.bin $WORK/big.dbg" "$WORK/r.raw" 2>/dev/null; DUMP=$(secs "$t")
t=$(now); mkdir "$WORK/rd"; debugfs -R "rdump /tree $WORK/rd" "$WORK/r.raw" 2>/dev/null; RDUMP=$(secs "$t")
cmp "$WORK/big.dbg" "$WORK/src/big.bin"

python3 - "$CAT" "$EXTRACT" "$RESTORE" "$DUMP" "$RDUMP" "$(field "$WORK/cat.json" bytes_read)" "$(field "$WORK/extract.json" bytes_read)" "$TREE_MIB" <<'PY'
import sys
cat, ext, res, dump, rdump = map(float, sys.argv[1:6]); cat_read, ext_read, tree = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
print(f"cat 100 MiB file:        {cat:7.2f} s (bytes_read {cat_read >> 20} MiB)  vs restore + debugfs dump {res + dump:7.2f} s  -> {(res + dump) / max(cat, 1e-3):.1f}x")
print(f"extract {tree} MiB tree:   {ext:7.2f} s (bytes_read {ext_read >> 20} MiB)  vs restore + debugfs rdump {res + rdump:7.2f} s -> {(res + rdump) / max(ext, 1e-3):.1f}x")
print(f"(restore of the 1 GiB image alone: {res:.2f} s)")
PY
