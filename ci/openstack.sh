# ci/openstack.sh — source me (bash): installs what the OpenStack tests need
# and starts, on 127.0.0.1:
#   * Keystone 30 + a Glance 33 that uses it    (state: .openstack-state)
#   * a Glance 33 without Keystone ("fakeauth") (state: .openstack-state-noauth)
#   * a second noauth Glance that the fault tests kill and restart
#                                               (state: .openstack-state-fault)
#   * Cinder 29 (API, scheduler, volume; RBD driver on a throw-away Ceph, a
#     private RabbitMQ) on that Keystone and the Keystone-backed Glance,
#     in the catalog as volumev3/block-storage (state: .openstack-state-cinder)
# and exports the variables the tests read:
#   GLANCE_URL                noauth Glance
#   GLANCE_FAULT_URL, GLANCE_FAULT_STATE_DIR   the one the fault tests kill
#   GLANCE_KEYSTONE_URL       the Keystone-backed Glance (also in the catalog)
#   OS_AUTH_URL OS_USERNAME OS_PASSWORD OS_PROJECT_NAME OS_USER_DOMAIN_ID
#   OS_PROJECT_DOMAIN_ID OS_REGION_NAME OS_INTERFACE    (admin, password auth)
#   KEYSTONE_*                demo user, application credentials, ...
#   CINDER_URL CINDER_CEPH_CONF CINDER_RBD_POOL CINDER_VENV_PYTHON
#   CINDER_LOG_DIR CINDER_PIDS ...  (all of tests/servers/start-cinder's exports)
#
#   source ci/openstack.sh            # start (idempotent: reuses running servers)
#   openstack_stop                    # stop them all (also on EXIT, see below)
#   bash ci/openstack.sh stop         # same, from another shell
#
# The venvs are cached: ./.venv-openstack (~300 MB, override: OPENSTACK_VENV)
# and ./.venv-cinder (~330 MB, override: CINDER_VENV).
# When sourced by a shell that has no EXIT trap yet, an EXIT trap that calls
# openstack_stop is installed (set IMGARC_OPENSTACK_NO_TRAP=1 to skip).
# Timings on this 2-core machine: see docs/openstack.md.

_os_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_os_servers=$_os_root/tests/servers
_os_s1=$_os_root/.openstack-state
_os_s2=$_os_root/.openstack-state-noauth
_os_s3=$_os_root/.openstack-state-fault
_os_s4=$_os_root/.openstack-state-cinder
export OPENSTACK_VENV=${OPENSTACK_VENV:-$_os_root/.venv-openstack}
export CINDER_VENV=${CINDER_VENV:-$_os_root/.venv-cinder}

openstack_stop() {
  local d
  # Cinder first: it talks to the Keystone and Glance stopped after it
  [ -d "$_os_s4/cinder" ] && bash "$_os_servers/stop-cinder" "$_os_s4" || true
  for d in "$_os_s3" "$_os_s2" "$_os_s1"; do
    [ -d "$d" ] && bash "$_os_servers/stop-openstack" "$d" || true
  done
}

_os_alive() { # STATE_DIR COMPONENT
  [ -f "$1/$2/$2.pid" ] && [ -f "$1/$2/env" ] && kill -0 "$(cat "$1/$2/$2.pid")" 2>/dev/null
}

_os_cinder_alive() { # every process start-cinder recorded still runs
  local n
  [ -f "$_os_s4/cinder/env" ] || return 1
  for n in cinder-api cinder-volume cinder-scheduler rabbitmq ceph-mon ceph-osd ceph-mgr; do
    [ -f "$_os_s4/cinder/run/$n.pid" ] && kill -0 "$(cat "$_os_s4/cinder/run/$n.pid")" 2>/dev/null || return 1
  done
}

_os_start_cinder() {
  # against the Keystone-backed Glance (Cinder calls it with the caller's
  # token) and the admin OS_* of that Keystone; a CINDER_PORT left over from
  # an earlier start's exports would make start-cinder refuse
  ( . "$_os_s1/keystone/env" && . "$_os_s1/glance/env" || exit 1
    unset CINDER_PORT
    export GLANCE_AUTH=keystone
    bash "$_os_servers/start-cinder" "$_os_s4" >/dev/null )
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
  local t0=$SECONDS rc=0 p2= p3= started=
  _os_prereqs || return 1
  if _os_alive "$_os_s1" keystone && _os_alive "$_os_s1" glance && _os_alive "$_os_s2" glance && _os_alive "$_os_s3" glance; then
    echo "ci/openstack.sh: reusing running Keystone/Glance" >&2
  else
    openstack_stop 2>/dev/null
    started=1
    # The noauth Glances start in the background while Keystone boots; the
    # venv install is serialized by the scripts' lock.
    ( bash "$_os_servers/start-glance" "$_os_s2" >/dev/null ) &
    p2=$!
    ( bash "$_os_servers/start-glance" "$_os_s3" >/dev/null ) &
    p3=$!
    ( unset OS_AUTH_URL KEYSTONE_GLANCE_PASSWORD
      bash "$_os_servers/start-glance" --keystone "$_os_s1" >/dev/null ) || rc=1
  fi
  # Cinder needs the Keystone-backed Glance, and only it: it boots (~16 s)
  # while the noauth Glances may still be starting. A Cinder is reused only
  # with the Keystone it registered in (a new Keystone stopped it above).
  if [ $rc -eq 0 ]; then
    if [ -z "$started" ] && _os_cinder_alive; then
      echo "ci/openstack.sh: reusing running Cinder" >&2
    else
      # a half-dead earlier Cinder (some of its processes gone) is stopped first
      [ -d "$_os_s4/cinder" ] && { bash "$_os_servers/stop-cinder" "$_os_s4" >/dev/null 2>&1 || true; }
      _os_start_cinder || rc=1
    fi
  fi
  [ -z "$p2" ] || wait "$p2" || rc=1
  [ -z "$p3" ] || wait "$p3" || rc=1
  if [ $rc -ne 0 ]; then
    echo "ci/openstack.sh: starting the OpenStack servers failed (logs under $_os_root/.openstack-state*/)" >&2
    if [ -n "$started" ]; then
      openstack_stop
    else # only Cinder was started here: leave the reused Keystone/Glance running
      [ -d "$_os_s4/cinder" ] && { bash "$_os_servers/stop-cinder" "$_os_s4" || true; }
    fi
    return 1
  fi
  # exports: keystone-backed glance first, then rename, then the noauth ones
  . "$_os_s1/keystone/env"
  . "$_os_s1/glance/env"
  export GLANCE_KEYSTONE_URL=$GLANCE_URL GLANCE_KEYSTONE_PID=$GLANCE_PID GLANCE_KEYSTONE_LOG=$GLANCE_LOG
  # only CINDER_*/KEYSTONE_CINDER_* lines (start-cinder got a Keystone and Glance); GLANCE_URL is set to the noauth one below
  . "$_os_s4/cinder/env"
  . "$_os_s3/glance/env"
  export GLANCE_FAULT_URL=$GLANCE_URL GLANCE_FAULT_STATE_DIR=$GLANCE_STATE_DIR GLANCE_FAULT_LOG=$GLANCE_LOG
  . "$_os_s2/glance/env"
  export OS_AUTH_TYPE=password
  echo "ci/openstack.sh: Keystone $OS_AUTH_URL, Glance (keystone) $GLANCE_KEYSTONE_URL, Glance (noauth) $GLANCE_URL, fault Glance $GLANCE_FAULT_URL, Cinder $CINDER_URL ready in $((SECONDS - t0))s" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # executed, not sourced
  case "${1:-start}" in
    stop) openstack_stop ;;
    start) openstack_start && { echo "# servers left running; stop with: bash ci/openstack.sh stop" >&2;
             for _v in $(compgen -e | grep -E '^(GLANCE_|OS_|KEYSTONE_|CINDER_)'); do printf 'export %s=%q\n' "$_v" "${!_v}"; done; } ;;
    *) echo "usage: bash ci/openstack.sh [start|stop]  (or: source ci/openstack.sh)" >&2; exit 2 ;;
  esac
else
  openstack_start || return 1
  if [ -z "${IMGARC_OPENSTACK_NO_TRAP:-}" ] && [ -z "$(trap -p EXIT)" ]; then
    trap openstack_stop EXIT
  fi
fi
