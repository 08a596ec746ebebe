#!/usr/bin/env bash
# ci/package.sh: build the imgarc .deb (cargo-deb, [package.metadata.deb] in Cargo.toml) and check
# it: the man pages and completions are generated from the packaged binary itself, the package
# is unpacked into a scratch root, its imgarc runs, its contents are listed and checked, the
# sysusers/tmpfiles files are applied to the scratch root, `systemd-analyze verify` checks
# the units against the scratch root's binary, and (as root) dpkg installs, reinstalls and purges it
# in a throwaway overlay of / (maintainer scripts included).
#
#   ci/package.sh            package the debug binary the tests already built (target/debug/imgarc,
#                            with the test features): fast, checks the packaging, version X~ci;
#                            NOT a package to ship (it carries the test hooks).
#   ci/package.sh --release  cargo build --release (default features), then package: the .deb to ship.
#
# Output: target/debian/imgarc_<version>_<arch>.deb (the path is printed last).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { echo "[package $(date +%H:%M:%S)] $*" >&2; }
die() { echo "ci/package.sh: $*" >&2; exit 1; }

release=0
for arg in "$@"; do
  case "$arg" in
    --release) release=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    *) die "unknown argument $arg (expected --release)" ;;
  esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || die "no version in Cargo.toml"

if ! cargo deb --version >/dev/null 2>&1; then
  log "installing cargo-deb (cargo install cargo-deb --locked, ~1.5 min)"
  cargo install cargo-deb --locked --version '=3.8.0' >/dev/null 2>&1 || die "cargo install cargo-deb failed"
fi

if [ "$release" = 1 ]; then
  log "cargo build --release"
  cargo build --release --locked --bin imgarc 2>&1 | tail -3
  profile=release
  bin=target/release/imgarc
  deb_version="$version-1"
else
  profile=dev
  bin=target/debug/imgarc
  [ -x "$bin" ] || die "$bin is missing: run cargo build first (or ci/package.sh --release)"
  # A CI package sorts before the release of the same version (~) and says what it is.
  deb_version="$version~ci-1"
fi

# The man pages and completions the package ships, from the binary it ships.
gen=target/package
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
"$bin" man -o "$gen/man"
gzip -9n "$gen"/man/*.1
"$bin" completions bash >"$gen/completions/imgarc.bash"
"$bin" completions zsh >"$gen/completions/_imgarc"
"$bin" completions fish >"$gen/completions/imgarc.fish"

log "cargo deb --no-build --profile $profile ($deb_version)"
rm -rf target/debian
fast=()
[ "$release" = 1 ] || fast=(--fast)
cargo deb --no-build --profile "$profile" --deb-version "$deb_version" "${fast[@]}" -o target/debian/ >/dev/null
deb=$(ls target/debian/imgarc_*.deb)
[ "$(echo "$deb" | wc -l)" = 1 ] || die "expected one .deb in target/debian, found: $deb"

log "contents of $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
expect() {
  local path=$1 mode=${2:-}
  local line
  line=$(echo "$contents" | awk -v p="./$path" '$NF == p || $(NF-2) == p { print; exit }')
  [ -n "$line" ] || die "the package lacks /$path"
  if [ -n "$mode" ]; then
    case "$line" in "$mode "*) ;; *) die "/$path has mode ${line%% *}, expected $mode" ;; esac
  fi
}
expect usr/bin/imgarc -rwxr-xr-x
expect usr/share/man/man1/imgarc.1.gz
expect usr/share/man/man1/imgarc-sync.1.gz
expect usr/share/bash-completion/completions/imgarc
expect usr/share/zsh/vendor-completions/_imgarc
expect usr/share/fish/vendor_completions.d/imgarc.fish
for unit in contrib/systemd/*; do expect "usr/lib/systemd/system/$(basename "$unit")" -rw-r--r--; done
expect usr/lib/sysusers.d/imgarc.conf
expect usr/lib/tmpfiles.d/imgarc.conf
expect etc/imgarc/sync.env -rw-r-----
expect usr/share/doc/imgarc/README.md
expect usr/share/doc/imgarc/nightly.md
dpkg-deb --info "$deb" conffiles | grep -qx /etc/imgarc/sync.env || die "/etc/imgarc/sync.env is not a conffile"
for script in postinst postrm prerm; do
  dpkg-deb --info "$deb" "$script" >/dev/null || die "the package has no $script"
done

# A scratch root: the package's files, and (below) the user and directories its postinst makes.
scratch="$ROOT/target/package-root"
rm -rf "$scratch"
dpkg-deb -x "$deb" "$scratch"
got=$("$scratch/usr/bin/imgarc" --version)
log "installed binary: $got"
[ "$got" = "imgarc $version" ] || die "$scratch/usr/bin/imgarc --version printed \"$got\", expected \"imgarc $version\""
# The packaged binary is the one asked for (cargo-deb maps target/release/ to the profile's
# directory; a stale binary of another profile must not slip in).
if command -v readelf >/dev/null 2>&1; then
  build_id() { readelf -n "$1" | sed -n 's/.*Build ID: *//p'; }
  [ "$(build_id "$scratch/usr/bin/imgarc")" = "$(build_id "$bin")" ] || die "the package holds another binary than $bin"
fi
"$scratch/usr/bin/imgarc" completions bash | cmp -s - "$scratch/usr/share/bash-completion/completions/imgarc" \
  || die "the shipped bash completion differs from what the shipped binary generates"

if command -v systemd-sysusers >/dev/null 2>&1 && command -v systemd-tmpfiles >/dev/null 2>&1; then
  mkdir -p "$scratch/etc"
  systemd-sysusers --root="$scratch" "$scratch/usr/lib/sysusers.d/imgarc.conf"
  grep -q '^imgarc:' "$scratch/etc/passwd" || die "systemd-sysusers made no imgarc user in the scratch root"
  systemd-tmpfiles --root="$scratch" --create "$scratch/usr/lib/tmpfiles.d/imgarc.conf"
  [ -d "$scratch/var/lib/imgarc" ] && [ -d "$scratch/var/cache/imgarc" ] || die "systemd-tmpfiles made no /var/lib/imgarc, /var/cache/imgarc"
  log "sysusers and tmpfiles applied to the scratch root"
else
  # .ci/run installs systemd: in CI a missing tool is a failure, elsewhere a skip that says so.
  [ -z "${CI:-}" ] || die "systemd-sysusers/systemd-tmpfiles are missing (.ci/run installs systemd)"
  log "skipped: systemd-sysusers/systemd-tmpfiles not installed (the sysusers and tmpfiles files are unchecked)"
fi

if command -v systemd-analyze >/dev/null 2>&1; then
  # verify needs the ExecStart binaries and the system's own units (sysinit.target, …): the units
  # are checked as shipped, but naming the scratch root's imgarc, against the host's systemd.
  # A template is checked through an instance (the OnFailure= name the units use).
  check="$ROOT/target/package-units"
  rm -rf "$check"
  mkdir -p "$check"
  for unit in "$scratch"/usr/lib/systemd/system/*; do
    name=$(basename "$unit")
    case "$name" in *@.service) name="${name%@.service}@imgarc-sync.service.service" ;; esac
    sed "s|/usr/bin/imgarc|$scratch/usr/bin/imgarc|g" "$unit" >"$check/$name"
  done
  # verify exits 0 on some problems (an ignored setting, a bad specifier): any output fails here.
  if ! out=$(cd "$check" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no ./* 2>&1) || [ -n "$out" ]; then
    echo "$out" >&2
    die "systemd-analyze verify reported problems in the units"
  fi
  log "systemd-analyze verify: the units are clean"
else
  [ -z "${CI:-}" ] || die "systemd-analyze is missing (.ci/run installs systemd)"
  log "skipped: systemd-analyze not installed (the units are unchecked)"
fi

# A real install, upgrade and purge with dpkg (its maintainer scripts included), in a throwaway
# copy-on-write overlay of / inside a private mount namespace: the machine itself is untouched.
# Needs root and overlayfs in a new mount namespace; elsewhere it is skipped, saying so.
overlay="$ROOT/target/package-overlay"
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 && command -v chroot >/dev/null 2>&1; then
  rm -rf "$overlay"
  mkdir -p "$overlay/upper" "$overlay/work" "$overlay/merged"
  cp "$deb" "$overlay/imgarc.deb"
  cat >"$overlay/check.sh" <<'CHECK'
set -eu
fail() { echo "ci/package.sh (dpkg install): $*" >&2; exit 1; }
mode() { stat -c '%U:%G %a' "$1"; }
deb=/imgarc-install-check.deb
dpkg -i "$deb" >/dev/null
[ "$(/usr/bin/imgarc --version)" = "imgarc $1" ] || fail "/usr/bin/imgarc --version: $(/usr/bin/imgarc --version)"
getent passwd imgarc >/dev/null || fail "no imgarc user after install"
[ "$(mode /etc/imgarc)" = "root:imgarc 750" ] || fail "/etc/imgarc is $(mode /etc/imgarc)"
[ "$(mode /etc/imgarc/sync.env)" = "root:imgarc 640" ] || fail "/etc/imgarc/sync.env is $(mode /etc/imgarc/sync.env)"
[ "$(mode /etc/imgarc/credentials)" = "root:root 700" ] || fail "/etc/imgarc/credentials is $(mode /etc/imgarc/credentials)"
for c in imgarc-password secure.yaml; do
  [ "$(mode /etc/imgarc/credentials/$c)" = "root:root 600" ] || fail "/etc/imgarc/credentials/$c is $(mode /etc/imgarc/credentials/$c)"
done
[ "$(mode /var/lib/imgarc)" = "imgarc:imgarc 750" ] || fail "/var/lib/imgarc is $(mode /var/lib/imgarc)"
man -w imgarc-sync >/dev/null 2>&1 || ! command -v man >/dev/null || fail "man imgarc-sync finds no page"
if command -v systemd-analyze >/dev/null; then
  cd /usr/lib/systemd/system
  cp imgarc-failure@.service /tmp/imgarc-failure@imgarc-sync.service.service
  out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no imgarc-sync.service imgarc-sync.timer imgarc-retention.service \
    imgarc-retention.timer imgarc-prune.service imgarc-report.service imgarc-drill.service imgarc-drill.timer \
    /tmp/imgarc-failure@imgarc-sync.service.service 2>&1) || fail "verify: $out"
  [ -z "$out" ] || fail "verify of the installed units: $out"
fi
# An operator's edit survives a reinstall (a conffile), and postinst runs again cleanly.
echo "OS_CLOUD=prod" >>/etc/imgarc/sync.env
echo "secret" >/etc/imgarc/credentials/imgarc-password
dpkg -i --force-confold "$deb" >/dev/null
grep -qx OS_CLOUD=prod /etc/imgarc/sync.env || fail "a reinstall lost the operator's sync.env"
grep -qx secret /etc/imgarc/credentials/imgarc-password || fail "a reinstall overwrote the password credential"
[ "$(mode /etc/imgarc/sync.env)" = "root:imgarc 640" ] || fail "after a reinstall /etc/imgarc/sync.env is $(mode /etc/imgarc/sync.env)"
dpkg --purge imgarc >/dev/null
[ ! -e /usr/bin/imgarc ] || fail "purge left /usr/bin/imgarc"
[ ! -e /etc/imgarc ] || fail "purge left /etc/imgarc: $(ls -la /etc/imgarc)"
! dpkg-statoverride --list /etc/imgarc/sync.env >/dev/null || fail "purge left the statoverride of sync.env"
echo "installed, reinstalled over an edited conffile, purged"
CHECK
  if out=$(unshare -m --fork sh -c '
      set -e
      mount --make-rprivate /
      mount -t overlay overlay -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" "$1/merged"
      for d in proc dev sys; do mount --rbind "/$d" "$1/merged/$d"; done
      mount -t tmpfs tmpfs "$1/merged/tmp"
      mount -t tmpfs tmpfs "$1/merged/run"
      cp "$1/imgarc.deb" "$1/merged/imgarc-install-check.deb"
      cp "$1/check.sh" "$1/merged/tmp/check.sh"
      exec chroot "$1/merged" sh /tmp/check.sh "$2"
    ' sh "$overlay" "$version" 2>&1); then
    log "dpkg in a throwaway overlay of /: $out"
  elif echo "$out" | grep -q '^ci/package.sh (dpkg install)'; then
    echo "$out" >&2
    die "the package does not install, upgrade or purge cleanly"
  else
    log "skipped: no throwaway overlay of / here (${out##*$'\n'}); the maintainer scripts were not run"
  fi
  rm -rf "$overlay"
else
  log "skipped: not root or no unshare/chroot; the maintainer scripts were not run"
fi

echo "$ROOT/$deb"
