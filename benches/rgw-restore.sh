#!/usr/bin/env bash
# Restore from Ceph RGW: imgarc binaries alternating with restic, night N of a make-series VM
# (qcow2 and raw) from the same RGW. Needs the RGW of ci/objectstore.sh (`IMGARC_OBJECTSTORE_SKIP=swift
# . ci/objectstore.sh` exports IMGARC_RGW_*; its memstore holds ~2 GiB: 3 nights of a 2 GiB VM
# for imgarc and restic fit), restic and /usr/bin/time. imgarc verifies every restore against the
# digests it recorded; restic's are not checked here.
#   benches/rgw-restore.sh CORPUS_DIR BIN...        BENCH_VM (a), BENCH_NIGHT (2), BENCH_REPS (2)
set -euo pipefail
CORPUS=${1:?usage: rgw-restore.sh CORPUS_DIR BIN...}
shift
[ $# -gt 0 ] || { echo "give one or more imgarc binaries" >&2; exit 1; }
: "${IMGARC_RGW_ENDPOINT:?start the RGW: IMGARC_OBJECTSTORE_SKIP=swift . ci/objectstore.sh}"
for t in restic /usr/bin/time; do command -v $t >/dev/null || { echo "skipped: $t is not installed"; exit 0; }; done
VM=${BENCH_VM:-a}; NIGHT=${BENCH_NIGHT:-2}; REPS=${BENCH_REPS:-2}
C=$CORPUS/vm-$VM
WORK=$(mktemp -d -p "${BENCH_TMP:-/var/tmp}")
trap 'rm -rf "$WORK"' EXIT
export AWS_ACCESS_KEY_ID=$IMGARC_RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$IMGARC_RGW_SECRET_KEY AWS_REGION=us-east-1
export IMGARC_PASSWORD=bench-password IMGARC_CACHE_DIR=$WORK/cache RESTIC_PASSWORD=bench-password
run=$(date +%s)
R="s3:$IMGARC_RGW_ENDPOINT/$IMGARC_RGW_BUCKET/bench-$run/imgarc"
export RESTIC_REPOSITORY="s3:$IMGARC_RGW_ENDPOINT/$IMGARC_RGW_BUCKET/bench-$run/restic"
"$1" --repo "$R" --quiet init
for n in $(seq 0 "$NIGHT"); do "$1" --repo "$R" --quiet archive "$C/night-$(printf %02d "$n").qcow2" --name "q$n"; done
"$1" --repo "$R" --quiet archive "$C/night-$(printf %02d "$NIGHT").raw" --name raw
id_of() { "$1" --repo "$R" --json list | python3 -c 'import json,sys; print([s["id"] for s in json.load(sys.stdin) if s["name"]==sys.argv[1]][-1])' "$2"; }
Q=$(id_of "$1" "q$NIGHT"); W=$(id_of "$1" raw)
restic init -q
for n in $(seq 0 "$NIGHT"); do restic backup -q --tag "q$n" "$C/night-$(printf %02d "$n").qcow2"; done
restic backup -q --tag raw "$C/night-$(printf %02d "$NIGHT").raw"
for rep in $(seq 1 "$REPS"); do
    for bin in "$@"; do
        for s in "$Q:qcow2" "$W:raw"; do
            rm -f "$WORK/out"; sync
            /usr/bin/time -f "$(basename "$bin") ${s#*:} %e s wall, %U user, %S sys, %M KiB" "$bin" --repo "$R" --quiet restore "${s%%:*}" -o "$WORK/out"
        done
    done
    for t in "q$NIGHT:qcow2" raw:raw; do
        rm -rf "$WORK/rout"; sync
        /usr/bin/time -f "restic ${t#*:} %e s wall, %U user, %S sys, %M KiB" restic restore -q latest --tag "${t%%:*}" --target "$WORK/rout"
    done
done
