#!/usr/bin/env bash
# Restore of QCOW2 nights, old and new binaries alternating in one run: night N of a make-series
# VM as qemu-img wrote it (clusters near guest order), its raw twin, and the same night with its
# data clusters' host order shuffled (benches/shuffle-qcow2: the layout of an image a VM wrote
# over months). One encrypted repository (aes-256-gcm, the default) holds nights 0..N and the
# shuffled copy; every restore is checked (sha256 against manifest.tsv; the shuffled one with cmp).
# Prints per binary and image: wall s, CPU s, peak RSS, chunks_fetched / chunks.
#   benches/restore-order.sh CORPUS_DIR [BIN...]   (default BIN: target/release/imgarc)
# BENCH_VM (default a), BENCH_NIGHT (default last), BENCH_REPS (default 2), BENCH_TIMEOUT
# (default 120 s: an old binary on the shuffled image can take many minutes; shown as "> T s").
set -euo pipefail
CORPUS=${1:?usage: restore-order.sh CORPUS_DIR [BIN...]}
shift
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$(dirname "$0")/../target/release/imgarc")
VM=${BENCH_VM:-a}
REPS=${BENCH_REPS:-2}
TIMEOUT=${BENCH_TIMEOUT:-120}
SHUFFLE=$(cd "$(dirname "$0")" && pwd)/shuffle-qcow2
[ -x /usr/bin/time ] || { echo "skipped: /usr/bin/time (apt-get install time) is missing"; exit 0; }
NIGHT=${BENCH_NIGHT:-$(awk -F'\t' -v vm="vm-$VM" '$1 == vm && $3 == "qcow2" { n = $2 } END { print n }' "$CORPUS/manifest.tsv")}
WORK=$(mktemp -d -p "${BENCH_TMP:-/var/tmp}")
trap 'rm -rf "$WORK"' EXIT
export IMGARC_PASSWORD=bench-password IMGARC_CACHE_DIR=$WORK/cache
sha_of() { awk -F'\t' -v vm="vm-$VM" -v n="$1" -v f="$2" '$1 == vm && $2 + 0 == n + 0 && $3 == f { print $6 }' "$CORPUS/manifest.tsv"; }
night=$(printf '%02d' "$NIGHT")
cp "$CORPUS/vm-$VM/night-$night.qcow2" "$WORK/shuffled.qcow2"
echo "shuffle-qcow2: $("$SHUFFLE" "$WORK/shuffled.qcow2" 1) clusters moved"
B0=${BINS[0]}
"$B0" --repo "$WORK/repo" --quiet init >/dev/null
declare -A SNAP CHUNKS
archive() { # name file
    local j
    j=$("$B0" --repo "$WORK/repo" --json archive "$2" --name "$1")
    SNAP[$1]=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot"])')
    CHUNKS[$1]=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')
}
for n in $(seq 0 "$NIGHT"); do archive "qcow2-$n" "$CORPUS/vm-$VM/night-$(printf '%02d' "$n").qcow2"; done
archive raw "$CORPUS/vm-$VM/night-$night.raw"
archive shuffled "$WORK/shuffled.qcow2"
printf '%-28s %-10s %8s %8s %9s %s\n' binary image wall_s cpu_s rss_mib chunks_fetched/chunks
for rep in $(seq 1 "$REPS"); do
    for bin in "${BINS[@]}"; do
        for img in "qcow2-$NIGHT" raw shuffled; do
            out=$WORK/out
            rm -f "$out"
            sync
            rc=0
            timeout "$TIMEOUT" /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" \
                "$bin" --repo "$WORK/repo" --json restore "${SNAP[$img]}" -o "$out" > "$WORK/json" 2>"$WORK/err" || rc=$?
            if [ "$rc" = 124 ]; then
                printf '%-28s %-10s %8s\n' "$(basename "$bin")" "$img" "> $TIMEOUT"
                continue
            fi
            [ "$rc" = 0 ] || { echo "restore of $img by $bin failed:" >&2; cat "$WORK/err" >&2; exit 1; }
            case $img in
                shuffled) cmp -s "$out" "$WORK/shuffled.qcow2" || { echo "$img restored by $bin differs" >&2; exit 1; } ;;
                raw) [ "$(sha256sum < "$out" | cut -d' ' -f1)" = "$(sha_of "$NIGHT" raw)" ] || { echo "raw restore differs" >&2; exit 1; } ;;
                *) [ "$(sha256sum < "$out" | cut -d' ' -f1)" = "$(sha_of "$NIGHT" qcow2)" ] || { echo "qcow2 restore differs" >&2; exit 1; } ;;
            esac
            read -r wall user sys rss < <(tail -1 "$WORK/time")
            fetched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("chunks_fetched", "-"))' "$WORK/json")
            printf '%-28s %-10s %8s %8.2f %9d %s/%s\n' "$(basename "$bin")" "$img" "$wall" "$(echo "$user + $sys" | bc)" $((rss / 1024)) "$fetched" "${CHUNKS[$img]}"
        done
    done
done
