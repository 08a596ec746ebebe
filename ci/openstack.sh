# ci/openstack.sh — source me (bash): installs what the OpenStack tests need
# and starts, on 127.0.0.1:
#   * Keystone 30 + a Glance 33 that uses it    (state: .openstack-state)
#   * a Glance 33 without Keystone ("fakeauth") (state: .openstack-state-noauth)
#   * a second noauth Glance that the fault tests kill and restart
#                                               (state: .openstack-state-fault)
# and exports the variables the tests read:
#   GLANCE_URL                noauth Glance
#   GLANCE_FAULT_URL, GLANCE_FAULT_STATE_DIR   the one the fault tests kill
#   GLANCE_KEYSTONE_URL       the Keystone-backed Glance (also in the catalog)
#   OS_AUTH_URL OS_USERNAME OS_PASSWORD OS_PROJECT_NAME OS_USER_DOMAIN_ID
#   OS_PROJECT_DOMAIN_ID OS_REGION_NAME OS_INTERFACE    (admin, password auth)
#   KEYSTONE_*                demo user, application credentials, ...
#
#   source ci/openstack.sh            # start (idempotent: reuses running servers)
#   openstack_stop                    # stop all three (also on EXIT, see below)
#   bash ci/openstack.sh stop         # same, from another shell
#
# The venv (~300 MB) is cached in ./.venv-openstack (override: OPENSTACK_VENV).
# When sourced by a shell that has no EXIT trap yet, an EXIT trap that calls
# openstack_stop is installed (set IMGARC_OPENSTACK_NO_TRAP=1 to skip).
# Timings on this 2-core machine: see docs/openstack.md.

_os_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_os_servers=$_os_root/tests/servers
_os_s1=$_os_root/.openstack-state
_os_s2=$_os_root/.openstack-state-noauth
_os_s3=$_os_root/.openstack-state-fault
export OPENSTACK_VENV=${OPENSTACK_VENV:-$_os_root/.venv-openstack}

openstack_stop() {
  local d
  for d in "$_os_s3" "$_os_s2" "$_os_s1"; do
    [ -d "$d" ] && bash "$_os_servers/stop-openstack" "$d" || true
  done
}

_os_alive() { # STATE_DIR COMPONENT
  [ -f "$1/$2/$2.pid" ] && [ -f "$1/$2/env" ] && kill -0 "$(cat "$1/$2/$2.pid")" 2>/dev/null
}

_os_prereqs() {
  # python3 >= 3.10 with venv/ensurepip (Debian splits it out), and flock
  local missing=()
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  command -v flock >/dev/null 2>&1 || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "ci/openstack.sh: installing ${missing[*]} (apt)" >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
      sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
  fi
}

openstack_start() {
  local t0=$SECONDS rc=0
  _os_prereqs || return 1
  if _os_alive "$_os_s1" keystone && _os_alive "$_os_s1" glance && _os_alive "$_os_s2" glance && _os_alive "$_os_s3" glance; then
    echo "ci/openstack.sh: reusing running Keystone/Glance" >&2
  else
    openstack_stop 2>/dev/null
    # The noauth Glances start in the background while Keystone boots; the
    # venv install is serialized by the scripts' lock.
    ( bash "$_os_servers/start-glance" "$_os_s2" >/dev/null ) &
    local p2=$!
    ( bash "$_os_servers/start-glance" "$_os_s3" >/dev/null ) &
    local p3=$!
    ( unset OS_AUTH_URL KEYSTONE_GLANCE_PASSWORD
      bash "$_os_servers/start-glance" --keystone "$_os_s1" >/dev/null ) || rc=1
    wait "$p2" || rc=1
    wait "$p3" || rc=1
    if [ $rc -ne 0 ]; then
      echo "ci/openstack.sh: starting the OpenStack servers failed (logs under $_os_root/.openstack-state*/)" >&2
      openstack_stop
      return 1
    fi
  fi
  # exports: keystone-backed glance first, then rename, then the noauth ones
  . "$_os_s1/keystone/env"
  . "$_os_s1/glance/env"
  export GLANCE_KEYSTONE_URL=$GLANCE_URL GLANCE_KEYSTONE_PID=$GLANCE_PID GLANCE_KEYSTONE_LOG=$GLANCE_LOG
  . "$_os_s3/glance/env"
  export GLANCE_FAULT_URL=$GLANCE_URL GLANCE_FAULT_STATE_DIR=$GLANCE_STATE_DIR GLANCE_FAULT_LOG=$GLANCE_LOG
  . "$_os_s2/glance/env"
  export OS_AUTH_TYPE=password
  echo "ci/openstack.sh: Keystone $OS_AUTH_URL, Glance (keystone) $GLANCE_KEYSTONE_URL, Glance (noauth) $GLANCE_URL, fault Glance $GLANCE_FAULT_URL ready in $((SECONDS - t0))s" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # executed, not sourced
  case "${1:-start}" in
    stop) openstack_stop ;;
    start) openstack_start && { echo "# servers left running; stop with: bash ci/openstack.sh stop" >&2;
             for _v in $(compgen -e | grep -E '^(GLANCE_|OS_|KEYSTONE_)'); do printf 'export %s=%q\n' "$_v" "${!_v}"; done; } ;;
    *) echo "usage: bash ci/openstack.sh [start|stop]  (or: source ci/openstack.sh)" >&2; exit 2 ;;
  esac
else
  openstack_start || return 1
  if [ -z "${IMGARC_OPENSTACK_NO_TRAP:-}" ] && [ -z "$(trap -p EXIT)" ]; then
    trap openstack_stop EXIT
  fi
fi
