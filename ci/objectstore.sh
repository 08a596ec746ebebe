# ci/objectstore.sh: start the real object stores the remote-backend tests
# need, on loopback, and export where they are.  Meant to be SOURCED by
# .ci/run (bash):
#
#     . ci/objectstore.sh            # installs (cached) + starts, exports IMGARC_*
#     cargo test --features remote-tests --test integration backend_conformance::
#     objectstore_stop               # stops only what this script started
#
# What it starts (scripts under tests/servers/, copied from the design work
# and owned by this project):
#   * Ceph RGW 16.2 (Debian radosgw + 1 mon + 1 memstore OSD)   -> IMGARC_RGW_*
#   * Keystone 30 (PyPI, gunicorn, sqlite)  -- reused if the caller already
#     exported a complete one (OS_AUTH_URL + KEYSTONE_SWIFT_USER + ...)
#   * Swift 2.38 SAIO behind that Keystone: native API  -> IMGARC_SWIFT_*
#     and its s3api with the demo user's EC2 keys      -> IMGARC_SWIFTS3_*
#
# Caching: venvs and downloaded .debs live under IMGARC_CI_CACHE (default
# ~/.cache/imgarc-ci); keep that directory between CI runs to skip the
# ~3-5 min of installs.  Set IMGARC_OBJECTSTORE_SKIP="rgw" or "swift" to
# start only one of them (the tests of the other then fail, by design).
#
# On failure it prints why and returns 1 (it never exits the caller's shell).

objectstore_stop() {
    local here=${IMGARC_OBJECTSTORE_SCRIPTS:-tests/servers}
    # reverse start order within each group: Swift (proxy first) before Keystone,
    # radosgw before its OSD and mon; the two groups stop in parallel
    ( [ -z "${IMGARC_RGW_PIDS:-}" ] || "$here/objectstore-stop" $IMGARC_RGW_PIDS ) &
    [ -z "${IMGARC_SWIFT_PIDS:-}" ] || "$here/objectstore-stop" $IMGARC_SWIFT_PIDS
    [ -z "${IMGARC_KEYSTONE_STARTED_PID:-}" ] || "$here/objectstore-stop" $IMGARC_KEYSTONE_STARTED_PID
    wait $!
    # state dirs (logs, data) of what was stopped; keep them with IMGARC_OBJECTSTORE_KEEP=1
    [ -n "${IMGARC_OBJECTSTORE_KEEP:-}" ] || for d in ${IMGARC_OBJECTSTORE_STATE_DIRS:-}; do rm -rf "$d"; done
    unset IMGARC_SWIFT_PIDS IMGARC_KEYSTONE_STARTED_PID IMGARC_RGW_PIDS IMGARC_OBJECTSTORE_STATE_DIRS
}

_objectstore_start() {
    local root here cache t0 t out
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    here=$root/tests/servers
    export IMGARC_OBJECTSTORE_SCRIPTS=$here
    cache=${IMGARC_CI_CACHE:-$HOME/.cache/imgarc-ci}
    mkdir -p "$cache/apt-archives/partial"
    t0=$(date +%s)
    local skip=${IMGARC_OBJECTSTORE_SKIP:-}

    # ---- installs (each step is a no-op when already installed/cached) ----
    local debs=""
    case $skip in *rgw*) ;; *) command -v radosgw >/dev/null && command -v ceph-osd >/dev/null \
        && command -v ceph-mon >/dev/null || debs="ceph-mon ceph-osd radosgw";; esac
    case $skip in *swift*) ;; *) command -v memcached >/dev/null || debs="$debs memcached";; esac
    if [ -n "$debs" ]; then
        echo "objectstore.sh: apt-get install $debs (debs cached in $cache/apt-archives)" >&2
        local aptopt=(-y -qq --no-install-recommends -o Dir::Cache::archives="$cache/apt-archives"
                      -o APT::Sandbox::User=root)
        # shellcheck disable=SC2086
        { DEBIAN_FRONTEND=noninteractive apt-get install "${aptopt[@]}" $debs \
          || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "${aptopt[@]}" $debs; }; } \
          >"$cache/apt.log" 2>&1 \
          || { tail -n 20 "$cache/apt.log" >&2; echo "objectstore.sh: apt-get install failed ($cache/apt.log)" >&2; return 1; }
    fi
    export SWIFT_VENV=${SWIFT_VENV:-$cache/swift-venv}
    export OPENSTACK_VENV=${OPENSTACK_VENV:-$cache/openstack-venv}
    export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$cache/pip}
    echo "objectstore.sh: installs done after $(( $(date +%s) - t0 ))s" >&2

    # ---- Ceph RGW: started in the background, in parallel with Keystone/Swift ----
    local rgw_out rgw_pid=""
    rgw_out=$(mktemp /tmp/imgarc-rgw-env.XXXXXX)
    case $skip in *rgw*) ;; *)
        ( t=$(date +%s)
          # A single-node Ceph on a loaded 2-core box occasionally fails to come
          # up (a mon command timing out while the OSD boots): start it afresh,
          # up to three times, showing why each failed attempt failed.
          for attempt in 1 2 3; do
              state=$(mktemp -d /tmp/ceph-rgw.XXXXXX)
              out=$(CEPH_STATE_DIR=$state S3_BUCKET=imgarc-ci "$here/objectstore-start-ceph-rgw") && break
              echo "objectstore.sh: Ceph RGW attempt $attempt failed; last log lines:" >&2
              tail -n 5 "$state"/log/*.log "$state"/log/*.out 2>/dev/null | sed 's/^/    /' >&2
              [ -f "$state/run/pids" ] && "$here/objectstore-stop" $(cat "$state/run/pids") >/dev/null 2>&1
              rm -rf "$state"
              out=""
              [ $attempt = 3 ] && exit 1
              sleep 5
          done
          # the script prints S3_ENDPOINT/AWS_* for RGW; keep them under our own names
          ( eval "$out"; printf "export IMGARC_RGW_ENDPOINT='%s' IMGARC_RGW_BUCKET='%s' IMGARC_RGW_ACCESS_KEY='%s' IMGARC_RGW_SECRET_KEY='%s' IMGARC_RGW_PIDS='%s' IMGARC_RGW_STATE='%s'\n" \
               "$S3_ENDPOINT" "$S3_BUCKET" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$RGW_PIDS" "$CEPH_BASE" ) >"$rgw_out"
          echo "objectstore.sh: RGW up after $(( $(date +%s) - t ))s" >&2 ) &
        rgw_pid=$!
    ;; esac

    # wait for the RGW start; export its variables (also on failure elsewhere,
    # so that objectstore_stop can stop it)
    _objectstore_join_rgw() {
        [ -n "$rgw_pid" ] || { rm -f "$rgw_out"; return 0; }
        local rc=0
        wait "$rgw_pid" || rc=$?
        rgw_pid=""
        if [ -s "$rgw_out" ]; then
            eval "$(cat "$rgw_out")"
            export IMGARC_OBJECTSTORE_STATE_DIRS="${IMGARC_OBJECTSTORE_STATE_DIRS:-} $IMGARC_RGW_STATE"
        fi
        rm -f "$rgw_out"
        [ $rc = 0 ] || { echo "objectstore.sh: Ceph RGW did not start" >&2; return 1; }
        echo "objectstore.sh: RGW at $IMGARC_RGW_ENDPOINT" >&2
    }

    # ---- Keystone (reuse a complete one from the caller) + Swift ----
    case $skip in *swift*) ;; *)
        t=$(date +%s)
        if [ -z "${OS_AUTH_URL:-}" ] || [ -z "${OS_PASSWORD:-}" ] || [ -z "${KEYSTONE_SWIFT_USER:-}" ] \
           || [ -z "${KEYSTONE_DEMO_APP_CRED_ID:-}" ]; then
            local ksdir=${IMGARC_KEYSTONE_STATE:-$(mktemp -d /tmp/imgarc-keystone.XXXXXX)}
            out=$(bash "$here/objectstore-start-keystone" "$ksdir") \
              || { echo "objectstore.sh: Keystone did not start" >&2; _objectstore_join_rgw; return 1; }
            eval "$out"
            export IMGARC_KEYSTONE_STARTED_PID=$KEYSTONE_PID
            export IMGARC_OBJECTSTORE_STATE_DIRS="${IMGARC_OBJECTSTORE_STATE_DIRS:-} $ksdir"
            echo "objectstore.sh: Keystone up at $OS_AUTH_URL after $(( $(date +%s) - t ))s" >&2
        fi
        t=$(date +%s)
        out=$(SWIFT_AUTH=keystone SWIFT_BUCKET=imgarc-ci "$here/objectstore-start-swift") \
          || { echo "objectstore.sh: Swift did not start" >&2; _objectstore_join_rgw; return 1; }
        out=$( eval "$out"; printf "export IMGARC_SWIFT_PIDS='%s' IMGARC_SWIFT_ENDPOINT='%s' IMGARC_SWIFT_CONTAINER='%s' IMGARC_SWIFTS3_ENDPOINT='%s' IMGARC_SWIFTS3_BUCKET='%s' IMGARC_SWIFTS3_ACCESS_KEY='%s' IMGARC_SWIFTS3_SECRET_KEY='%s' IMGARC_SWIFT_STATE='%s'\n" \
                 "$SWIFT_PIDS" "$SWIFT_ENDPOINT" "$SWIFT_CONTAINER" "$S3_ENDPOINT" "$S3_BUCKET" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$SWIFT_BASE" )
        eval "$out"
        export IMGARC_OBJECTSTORE_STATE_DIRS="${IMGARC_OBJECTSTORE_STATE_DIRS:-} $IMGARC_SWIFT_STATE"
        # the tests log in as the demo user (not admin) with its application credential
        export IMGARC_SWIFT_AUTH_URL=$OS_AUTH_URL
        export IMGARC_SWIFT_REGION=${OS_REGION_NAME:-RegionOne}
        export IMGARC_SWIFT_APP_CRED_ID=$KEYSTONE_DEMO_APP_CRED_ID
        export IMGARC_SWIFT_APP_CRED_SECRET=$KEYSTONE_DEMO_APP_CRED_SECRET
        export IMGARC_SWIFT_USERNAME=$KEYSTONE_DEMO_USERNAME
        export IMGARC_SWIFT_PASSWORD=$KEYSTONE_DEMO_PASSWORD
        export IMGARC_SWIFT_PROJECT=$KEYSTONE_DEMO_PROJECT
        echo "objectstore.sh: Swift up at $IMGARC_SWIFT_ENDPOINT after $(( $(date +%s) - t ))s" >&2
    ;; esac
    _objectstore_join_rgw || return 1
    echo "objectstore.sh: all object stores up after $(( $(date +%s) - t0 ))s" >&2
}

_objectstore_start
