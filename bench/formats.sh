#!/usr/bin/env bash
# The cross-format matrix on the corpus disk (tests/integration/format_matrix.rs at full size):
# the corpus raw disk made into every input format/subformat with `qemu-img convert`, each
# archived into one repository (raw twin first): archive time and stored bytes added per format;
# then every output format × subformat restored from the QCOW2 snapshot (`restore --disk-format`)
# side by side with `qemu-img convert` of the same conversion from the QCOW2 file (ratio =
# imgarc / qemu-img). Not a test: it asserts nothing about speed. A format whose decomposer or
# writer is not in the binary shows `opaque` / `n/a`.
# Needs IMGARC_CORPUS (a make-series output; .ci/run builds one), qemu-img on PATH.
# IMGARC_BIN (default target/release/imgarc), BENCH_DISK (default: the corpus's first raw image).
set -euo pipefail
BIN=${IMGARC_BIN:-$(dirname "$0")/../target/release/imgarc}
: "${IMGARC_CORPUS:?set IMGARC_CORPUS to a corpus directory (make-series output)}"
command -v qemu-img >/dev/null || { echo "skipped: qemu-img is not installed"; exit 0; }
DISK=${BENCH_DISK:-$IMGARC_CORPUS/$(awk -F'\t' '$3 == "raw" { print $4; exit }' "$IMGARC_CORPUS/manifest.tsv")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export IMGARC_PASSWORD=bench-password IMGARC_CACHE_DIR=$WORK/cache
REPO=$WORK/repo

now() { date +%s.%N; }
secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.2f}")' "$1"; }
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d.get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }
ratio() { python3 -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f"{a/b:.2f}" if b > 0 else "-")' "$1" "$2"; }

# name | qemu format | qemu-img convert options
INPUTS=(
    "raw|raw|"
    "qcow2|qcow2|"
    "qcow2-compressed|qcow2|-c"
    "vmdk-monolithicSparse|vmdk|-o subformat=monolithicSparse"
    "vmdk-streamOptimized|vmdk|-o subformat=streamOptimized"
    "vdi-dynamic|vdi|"
    "vdi-fixed|vdi|-o static=on"
    "vhd-dynamic|vpc|"
    "vhd-fixed|vpc|-o subformat=fixed"
    "vhdx-dynamic|vhdx|"
    "vhdx-fixed|vhdx|-o subformat=fixed"
)
# name | imgarc restore flags | qemu format | qemu-img convert options of the same conversion
OUTPUTS=(
    "raw|--disk-format raw|raw|"
    "qcow2|--disk-format qcow2|qcow2|"
    "qcow2-compressed|--disk-format qcow2 --compress|qcow2|-c"
    "vmdk|--disk-format vmdk|vmdk|-o subformat=streamOptimized"
    "vmdk-monolithicSparse|--disk-format vmdk --subformat monolithicSparse|vmdk|-o subformat=monolithicSparse"
    "vdi|--disk-format vdi|vdi|"
    "vdi-fixed|--disk-format vdi --subformat fixed|vdi|-o static=on"
    "vhd|--disk-format vhd|vpc|"
    "vhd-fixed|--disk-format vhd --subformat fixed|vpc|-o subformat=fixed"
    "vhdx|--disk-format vhdx|vhdx|"
    "vhdx-fixed|--disk-format vhdx --subformat fixed|vhdx|-o subformat=fixed"
)

"$BIN" -q -r "$REPO" init
echo "disk: $DISK ($(stat -c %s "$DISK") bytes), $("$BIN" --version)"
echo
printf '%-24s %12s %9s %9s %9s %14s %8s %s\n' input file_bytes mk_s archive_s qemu_raw_s stored_added pct_raw archived_as
raw_added=0
QCOW2_SNAP=
for spec in "${INPUTS[@]}"; do
    IFS='|' read -r name fmt opts <<<"$spec"
    if [ "$name" = raw ]; then
        img=$DISK mk=0
    else
        img=$WORK/in-$name.$fmt
        t=$(now)
        # shellcheck disable=SC2086 # opts are words
        qemu-img convert -f raw -O "$fmt" $opts "$DISK" "$img"
        mk=$(secs "$t")
    fi
    # What reading the guest view costs qemu (the floor of any archive of it).
    t=$(now); qemu-img convert -f "$fmt" -O raw "$img" "$WORK/guest.raw"; qraw=$(secs "$t"); rm -f "$WORK/guest.raw"
    t=$(now); "$BIN" --json -r "$REPO" archive "$img" --name "$name" >"$WORK/a.json"; arch=$(secs "$t")
    added=$(field "$WORK/a.json" stored_bytes_added)
    [ "$name" = raw ] && raw_added=$added
    [ "$name" = qcow2 ] && QCOW2_SNAP=$(field "$WORK/a.json" snapshot) && QCOW2_IMG=$img
    # The format archive detected, and whether its guest disk was read (else stored opaque).
    layout=$(field "$WORK/a.json" format)
    [ -n "$(field "$WORK/a.json" opaque)" ] && layout="$layout, opaque"
    pct=$(python3 -c "print(f'{$added*100/max($raw_added,1):.2f}')")
    printf '%-24s %12s %9s %9s %9s %14s %7s%% %s\n' "$name" "$(stat -c %s "$img")" "$mk" "$arch" "$qraw" "$added" "$pct" "$layout"
    [ "$name" = raw ] || [ "$name" = qcow2 ] || rm -f "$img"
done

echo
echo "conversions from the qcow2 snapshot (imgarc restore) vs qemu-img convert from the qcow2 file"
printf '%-24s %10s %10s %7s %12s %12s\n' output imgarc_s qemu_s ratio imgarc_bytes qemu_bytes
for spec in "${OUTPUTS[@]}"; do
    IFS='|' read -r name flags fmt opts <<<"$spec"
    out=$WORK/out-$name.$fmt
    t=$(now)
    # shellcheck disable=SC2086 # flags are words
    if ! "$BIN" -q -r "$REPO" restore "$QCOW2_SNAP" -o "$out" $flags 2>"$WORK/err"; then
        printf '%-24s %10s   (%s)\n' "$name" n/a "$(head -c 100 "$WORK/err")"
        continue
    fi
    ours=$(secs "$t")
    t=$(now)
    # shellcheck disable=SC2086
    qemu-img convert -f qcow2 -O "$fmt" $opts "$QCOW2_IMG" "$WORK/q.$fmt"
    theirs=$(secs "$t")
    printf '%-24s %10s %10s %7s %12s %12s\n' "$name" "$ours" "$theirs" "$(ratio "$ours" "$theirs")" "$(stat -c %s "$out")" "$(stat -c %s "$WORK/q.$fmt")"
    rm -f "$out" "$WORK/q.$fmt"
done
