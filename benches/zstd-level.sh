#!/usr/bin/env bash
# The zstd level trade on a make-series corpus (format-spec, "Choosing the zstd level"):
# for each level, a fresh encrypted repository (aes-256-gcm, as the default
# operator setup), night 0 (new data: compression-bound) and the later nights
# archived in order, the repository's size, and a restore of the last night.
# Wall and CPU seconds from /usr/bin/time; one line per level.
#
#   benches/zstd-level.sh CORPUS_DIR [LEVELS] [VM:FORMAT]
#   e.g. benches/zstd-level.sh /tmp/corpus 1,3,6 vm-a:qcow2 (format-spec, "Choosing the zstd level")
# Uses IMGARC_BIN (default target/release/imgarc). Needs ~2× one night of free space in TMPDIR.
set -euo pipefail
corpus=${1:?usage: zstd-level.sh CORPUS_DIR [LEVELS] [VM:FORMAT]}
levels=${2:-1,2,3,5}
series=${3:-vm-a:qcow2}
vm=${series%%:*}; fmt=${series##*:}
bin=${IMGARC_BIN:-target/release/imgarc}
export IMGARC_PASSWORD=${IMGARC_PASSWORD:-zstd level bench}
work=$(mktemp -d "${TMPDIR:-/tmp}/imgarc-zstd-level.XXXXXX")
trap 'rm -rf "$work"' EXIT
nights=$(awk -v vm="$vm" -v f="$fmt" '$1==vm && $3==f {print $4}' "$corpus/manifest.tsv")
[ -n "$nights" ] || { echo "no $vm $fmt nights in $corpus/manifest.tsv" >&2; exit 2; }
timed() { # label cmd... → "wall cpu rss_kib" of the command
  /usr/bin/time -f '%e %U %S %M' -o "$work/t" "$@" >/dev/null
  awk '{printf "%.2f %.2f %d\n", $1, $2+$3, $4}' "$work/t"
}
printf '| zstd level | night 0 wall / CPU s | later night wall / CPU s (mean) | repository MB | restore of the last night wall / CPU s |\n'
printf '| --- | --- | --- | --- | --- |\n'
IFS=, read -ra lv <<<"$levels"
for level in "${lv[@]}"; do
  repo="$work/repo-$level"; rm -rf "$repo"
  "$bin" --repo "$repo" --quiet init --compression "zstd:$level" --encryption aes-256-gcm >/dev/null
  n=0; later_wall=0; later_cpu=0; first=""; last=""
  for f in $nights; do
    cat "$corpus/$f" >/dev/null   # warm page cache, as the peer bench does
    read -r w c _ < <(timed "$bin" --repo "$repo" --quiet archive "$corpus/$f" --name "$vm")
    if [ -z "$first" ]; then first="$w / $c"; else later_wall=$(echo "$later_wall + $w" | bc); later_cpu=$(echo "$later_cpu + $c" | bc); n=$((n+1)); fi
    last=$f
  done
  size=$(du -sb "$repo" | awk '{printf "%.1f", $1/1e6}')
  snap=$("$bin" --repo "$repo" --json list | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s[-1]["id"])')
  read -r rw rc _ < <(timed "$bin" --repo "$repo" --quiet restore "$snap" -o "$work/restored")
  rm -f "$work/restored"
  later="-"; [ "$n" -gt 0 ] && later="$(echo "scale=2; $later_wall / $n" | bc) / $(echo "scale=2; $later_cpu / $n" | bc)"
  printf '| %s | %s | %s | %s | %s / %s |\n' "$level" "$first" "$later" "$size" "$rw" "$rc"
  rm -rf "$repo"
done
