#!/usr/bin/env bash
# A real SLURM cluster (Debian slurm-wlm + munge) for CI and tests: one node by default, or several
# nodes with accounting (slurmdbd on MariaDB) and a preempting partition.
#
# Usage:
#   scripts/local_slurm.sh install   # apt-get the packages (quick no-op when present)
#   scripts/local_slurm.sh start     # write config, start munged (+ mariadbd, slurmdbd) + slurmctld + slurmd(s), wait until usable
#   scripts/local_slurm.sh stop      # cancel all jobs, then stop every daemon (and node namespace) it started
#   scripts/local_slurm.sh status    # exit 0 if the controller answers and every node is usable
#   scripts/local_slurm.sh env       # print `export SLURM_CONF=...`; use: eval "$(scripts/local_slurm.sh env)"
#   scripts/local_slurm.sh kill-node NAME  # multi-node only: SIGKILL everything on node NAME (a node failure); `start` revives it
#
# Environment:
#   LOCAL_SLURM_DIR             state folder (default /tmp/sweep-slurm)
#   LOCAL_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 11: small on purpose, so array chunking gets tested)
#   LOCAL_SLURM_MAX_JOB_COUNT   MaxJobCount: job records the controller holds at once (default: SLURM's, 10000)
#   LOCAL_SLURM_MIN_JOB_AGE     MinJobAge: seconds a finished job's record is kept (default: SLURM's, 300)
#   LOCAL_SLURM_START_TIMEOUT   seconds `start` waits for each daemon (default 30)
#   LOCAL_SLURM_CTLD_PORT       slurmctld port (default 6817)
#   LOCAL_SLURM_SLURMD_PORT     slurmd port (default 6818)
#   LOCAL_SLURM_NODES           compute nodes (default 1: the machine itself; 2-9: one network+UTS namespace each)
#   LOCAL_SLURM_ACCOUNTING      1: slurmdbd on a private MariaDB, so sacct works (default 0)
#   LOCAL_SLURM_DBD_PORT        slurmdbd port (default slurmctld's + 2); MariaDB listens on 127.0.0.1:(this + 1)
#   LOCAL_SLURM_SUBNET          first three octets of the nodes' /24 (default 10.223.23; .1 is the controller's side)
#
# Everything lives in the state folder and clients find it through SLURM_CONF, so /etc/slurm and
# /etc/munge are never touched. The machine has no systemd and no usable cgroups, hence every daemon
# is started by hand and the config avoids cgroup plugins.
#
# Several nodes: each slurmd runs in its own network, UTS and mount namespace (unshare, held by a
# `sleep infinity` whose pid is in the state folder), with its own hostname (node1, node2, ...), its
# own address on a bridge and an /etc/hosts of the state folder bind-mounted in its mount namespace
# only. Not SLURM's multiple-slurmd mode (`slurmd -N`): Debian's 22.05 build is not configured with
# --enable-multiple-slurmd (no per-node Port=), and all its nodes would share one hostname, so the
# trials' `host` field, `nodelist`/`exclude` by hostname and Ray's per-node addresses could not be
# tested. Traffic stays on the bridge and loopback: no default route, no forwarding. Two partitions:
# `debug` (default, low priority) and `high`, which preempts it with requeue
# (PreemptType=preempt/partition_prio, PreemptMode=REQUEUE). A killed node comes back with `start`.
set -euo pipefail
shopt -s extglob

# Slurm wants absolute paths in its config.
STATE_DIR=$(realpath -m "${LOCAL_SLURM_DIR:-/tmp/sweep-slurm}")
MAX_ARRAY_SIZE=${LOCAL_SLURM_MAX_ARRAY_SIZE:-11}
# Written to slurm.conf only when set, so clusters started without them keep the same config text.
MAX_JOB_COUNT=${LOCAL_SLURM_MAX_JOB_COUNT:-}
MIN_JOB_AGE=${LOCAL_SLURM_MIN_JOB_AGE:-}
START_TIMEOUT=${LOCAL_SLURM_START_TIMEOUT:-30}
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
NODES=${LOCAL_SLURM_NODES:-1}
ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-0}
DBD_PORT=${LOCAL_SLURM_DBD_PORT:-$((CTLD_PORT + 2))}
DB_PORT=$((DBD_PORT + 1))
SUBNET=${LOCAL_SLURM_SUBNET:-10.223.23}

CONF_DIR=$STATE_DIR/conf
CONF=$CONF_DIR/slurm.conf
LOG_DIR=$STATE_DIR/log
PID_DIR=$STATE_DIR/run
MUNGE_DIR=$STATE_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
MUNGE_KEY=$MUNGE_DIR/munge.key
MUNGE_PID=$MUNGE_DIR/munged.pid
CTLD_PID=$PID_DIR/slurmctld.pid
SLURMD_PID=$PID_DIR/slurmd.pid
NODE=$(hostname)
DB_DIR=$STATE_DIR/mariadb
DB_RUN=$DB_DIR/run # mariadbd runs as user mysql: its socket, pid file and log live here
DB_SOCKET=$DB_RUN/mariadbd.sock
DB_PID=$DB_RUN/mariadbd.pid
DB_LOG=$DB_RUN/mariadb.log
DBD_PID=$PID_DIR/slurmdbd.pid
# Several nodes: names, addresses and interfaces (named after the controller port, so two such
# clusters on one machine do not collide; Linux allows 15 characters).
NODE_NAMES=()
CTL_ADDR=127.0.0.1
BRIDGE=sw${CTLD_PORT}br
if ((NODES > 1)); then
    for ((i = 1; i <= NODES; i++)); do NODE_NAMES+=("node$i"); done
    CTL_ADDR=$SUBNET.1
    NODE_LIST=node[1-$NODES]
fi
node_addr() { echo "$SUBNET.$((10 + ${1#node}))"; }
ns_pidfile() { echo "$PID_DIR/ns-$1.pid"; }
slurmd_pidfile() { echo "$PID_DIR/slurmd-$1.pid"; }

# Daemons and clients alike read this; exporting it here keeps the script independent of /etc/slurm.
export SLURM_CONF=$CONF

PACKAGES=(slurmctld slurmd slurm-client munge)
((ACCOUNTING)) && PACKAGES+=(slurmdbd mariadb-server)
((NODES > 1)) && PACKAGES+=(iproute2 util-linux)

log() { echo "local_slurm: $*" >&2; }

die() {
    log "ERROR: $*"
    exit 1
}

# A failed start shows what the daemon said (slurmctld in particular exits 0 even when it dies on a bad
# config, as it forks first, so its log is often the only clue), then stops the half-started cluster.
fail_start() {
    local msg=$1 f
    shift
    log "ERROR: $msg"
    for f in "$@"; do
        [[ -s $f ]] || continue
        echo "----- tail of $f -----" >&2
        tail -n 25 "$f" >&2
    done
    log "stopping what was started"
    stop_everything
    exit 1
}

require_root() {
    [[ $EUID -eq 0 ]] || die "'$1' must run as root (munged runs via runuser, SlurmUser=root)"
}

# Pid from a pid file, printed only if that process is alive and is the program we expect: guards
# against stale files and recycled pids, so stop never signals a stranger.
live_pid() {
    local pidfile=$1 name=$2 pid comm
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name"* ]] || return 1
    echo "$pid"
}

# Polls (every 0.2 s) until a check passes or the start timeout runs out, giving up early once the
# daemon's process is gone: it died while starting. Daemons write their pid file within a second.
wait_for_daemon() {
    local pidfile=$1 name=$2
    shift 2
    local deadline=$((SECONDS + START_TIMEOUT)) grace=$((SECONDS + 3))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        if ((SECONDS >= grace)) && ! live_pid "$pidfile" "$name" >/dev/null; then
            log "$name is not running"
            return 1
        fi
        sleep 0.2
    done
}

# scontrol retries for MessageTimeout when the controller is down; cap it so polling stays quick.
ctld_up() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { timeout 5 sinfo -h -N -n "${1:-$NODE}" -o '%T' 2>/dev/null | head -n 1; }

node_usable() {
    case $(node_state "${1:-$NODE}") in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
    esac
}

# Epoch seconds at which the running slurmd registered with the controller (0 if unknown).
slurmd_registered_at() {
    local t
    t=$(timeout 5 scontrol -o show node "${1:-$NODE}" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)
    date -d "$t" +%s 2>/dev/null || echo 0
}

# Pid files first: a client whose SLURM_CONF is missing retries for 60 s, and scontrol ping waits out
# MessageTimeout when nothing listens, so only ask slurmctld once its process exists.
is_up() {
    live_pid "$CTLD_PID" slurmctld >/dev/null && [[ -r $CONF ]] || return 1
    if ((ACCOUNTING)); then
        live_pid "$DBD_PID" slurmdbd >/dev/null || return 1
    fi
    if ((NODES == 1)); then
        live_pid "$SLURMD_PID" slurmd >/dev/null && ctld_up && node_usable
        return
    fi
    local n
    for n in "${NODE_NAMES[@]}"; do
        live_pid "$(slurmd_pidfile "$n")" slurmd >/dev/null || return 1
    done
    ctld_up || return 1
    for n in "${NODE_NAMES[@]}"; do
        node_usable "$n" || return 1
    done
}

all_installed() {
    local states
    states=$(dpkg-query -W -f='${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null) || return 1
    ! grep -qvx installed <<<"$states"
}

cmd_install() {
    if ! all_installed; then
        local sudo=()
        [[ $EUID -eq 0 ]] || sudo=(sudo)
        export DEBIAN_FRONTEND=noninteractive
        # Only refresh package lists when apt does not know the packages yet (fresh images ship none).
        if ! apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            "${sudo[@]}" apt-get update -q
        fi
        # policy-rc.d in containers refuses to start the services here; harmless, we start them by hand.
        if ! "${sudo[@]}" apt-get install --no-install-recommends -y -q "${PACKAGES[@]}"; then
            log "install failed; refreshing package lists and retrying"
            "${sudo[@]}" apt-get update -q
            "${sudo[@]}" apt-get install --no-install-recommends -y -q "${PACKAGES[@]}"
        fi
    fi
    log "installed: $(slurmctld -V) / $(munged --version | head -n 1)"
}

# This machine's CPUs. GNU nproc also obeys OMP_NUM_THREADS, which a caller (a test) may have set
# to 1: a node configured with fewer CPUs than it has is refused ("different slurm.conf").
cpus() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }

# Node memory in MB, leaving headroom for the OS: slurmd drains a node that reports less than
# RealMemory, so this must stay below what the machine has.
real_memory_mb() {
    local total_kb total_mb headroom
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    total_mb=$((total_kb / 1024))
    headroom=$((total_mb / 10 > 512 ? total_mb / 10 : 512))
    echo $((total_mb > headroom + 256 ? total_mb - headroom : 256))
}

render_slurm_conf() {
    # One node: the machine itself. Several: per-node pid, log and spool files (%n: the node's name).
    local slurmd_pid=$SLURMD_PID slurmd_log=$LOG_DIR/slurmd.log spool=$STATE_DIR/spool
    if ((NODES > 1)); then
        slurmd_pid=$PID_DIR/slurmd-%n.pid slurmd_log=$LOG_DIR/slurmd-%n.log spool=$STATE_DIR/spool/%n
    fi
    local storage="# No cgroups and no slurmdbd on this machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none"
    if ((ACCOUNTING)); then
        storage="# No cgroups; accounting through our slurmdbd (sacct works).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# The munge socket for talking to slurmdbd (AuthInfo does not apply to that connection).
AccountingStoragePass=$MUNGE_SOCKET
# As real sites run it: a job needs an association (root has one), and QOS and association limits
# hold (a job over a QOS's MaxWall pends, reason QOSMaxWallDurationPerJobLimit).
AccountingStorageEnforce=associations,limits,qos"
    fi
    cat <<EOF
# Generated by scripts/local_slurm.sh; rewritten on every start.
ClusterName=sweep
SlurmctldHost=$NODE($CTL_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also bounds how long a requeued job waits before it may start again (default ~121 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$slurmd_log
SlurmctldDebug=info
SlurmdDebug=info
# Keep the site's /etc/slurm/plugstack.conf (SPANK plugins) out of our cluster.
PlugStackConfig=$CONF_DIR/plugstack.conf
$storage
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule every 2 s instead of every 30-60 s, so tests do not sit waiting.
SchedulerParameters=bf_interval=2,sched_interval=2
MailProg=/bin/true
ReturnToService=2
MaxArraySize=$MAX_ARRAY_SIZE
# Fake GPUs for GRES tests. Do not add AccountingStorageTRES=gres/gpu: fatal without slurmdbd.
GresTypes=gpu
EOF
    # A full controller (MaxJobCount records; a finished job's is kept MinJobAge seconds) refuses new jobs.
    [[ -z $MAX_JOB_COUNT ]] || echo "MaxJobCount=$MAX_JOB_COUNT"
    [[ -z $MIN_JOB_AGE ]] || echo "MinJobAge=$MIN_JOB_AGE"
    if ((NODES == 1)); then
        cat <<EOF
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$(cpus) RealMemory=$(real_memory_mb) Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
        return
    fi
    local n all
    all=$(
        IFS=,
        echo "${NODE_NAMES[*]}"
    )
    cat <<EOF
# A node that stops answering is DOWN after 15 s (its jobs end NODE_FAIL and are requeued), not 300 s.
SlurmdTimeout=15
# The high partition's jobs preempt the debug partition's, which are requeued.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
EOF
    for n in "${NODE_NAMES[@]}"; do
        echo "NodeName=$n NodeAddr=$(node_addr "$n") NodeHostname=$n CPUs=$(cpus) RealMemory=$(real_memory_mb) Gres=gpu:2 State=UNKNOWN"
    done
    cat <<EOF
PartitionName=debug Nodes=$all Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes=$all MaxTime=INFINITE State=UP PriorityTier=10
EOF
}

render_slurmdbd_conf() {
    cat <<EOF
# Generated by scripts/local_slurm.sh; rewritten on every start.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DBD_PID
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$DB_DIR/slurm.pass")
StorageLoc=slurm_acct_db
EOF
}

render_hosts() {
    local n
    echo "127.0.0.1 localhost"
    echo "$CTL_ADDR $NODE"
    for n in "${NODE_NAMES[@]}"; do echo "$(node_addr "$n") $n"; done
}

render_gres_conf() {
    cat <<EOF
# Generated by scripts/local_slurm.sh. Two fake GPUs backed by /dev/null-like character devices.
AutoDetect=off
NodeName=${NODE_LIST:-$NODE} Name=gpu File=$STATE_DIR/dev/gpu[0-1]
EOF
}

# Slurm only accepts character devices for GRES File=. mknod needs CAP_MKNOD; where that is missing
# (unprivileged containers) a symlink to /dev/null is a character device too once stat follows it.
make_fake_gpus() {
    local i dev
    mkdir -p "$STATE_DIR/dev"
    for i in 0 1; do
        dev=$STATE_DIR/dev/gpu$i
        [[ -c $dev ]] && continue
        rm -f "$dev"
        mknod -m 0666 "$dev" c 1 3 2>/dev/null || ln -s /dev/null "$dev"
    done
}

write_config() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$PID_DIR" "$STATE_DIR/state" "$STATE_DIR/spool"
    # Clients running as other users must be able to read the config.
    chmod 0755 "$STATE_DIR" "$CONF_DIR" "$LOG_DIR" "$PID_DIR"
    render_slurm_conf >"$CONF"
    render_gres_conf >"$CONF_DIR/gres.conf"
    : >"$CONF_DIR/plugstack.conf"
    chmod 0644 "$CONF" "$CONF_DIR/gres.conf" "$CONF_DIR/plugstack.conf"
    make_fake_gpus
    if ((NODES > 1)); then
        render_hosts >"$CONF_DIR/hosts"
        chmod 0644 "$CONF_DIR/hosts"
        mkdir -p "${NODE_NAMES[@]/#/$STATE_DIR/spool/}"
    fi
    if ((ACCOUNTING)); then
        mkdir -p "$DB_DIR"
        [[ -s $DB_DIR/slurm.pass ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_DIR/slurm.pass")
        # slurmdbd finds it beside slurm.conf (SLURM_CONF's folder); it holds a password: root only.
        (umask 077 && render_slurmdbd_conf >"$CONF_DIR/slurmdbd.conf")
        chmod 0600 "$CONF_DIR/slurmdbd.conf"
    fi
}

# ---- accounting: MariaDB and slurmdbd ------------------------------------------------------------
db_answers() { timeout 5 mariadb --no-defaults -S "$DB_SOCKET" -u root -e 'SELECT 1' >/dev/null 2>&1; }

start_mariadb() {
    if live_pid "$DB_PID" mariadbd >/dev/null; then
        return 0
    fi
    install -d -o mysql -g mysql -m 0750 "$DB_DIR/data"
    install -d -o mysql -g mysql -m 0755 "$DB_RUN"
    if [[ ! -d $DB_DIR/data/mysql ]]; then
        # --no-defaults: the machine's /etc/mysql is never read; root logs in through the socket only.
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" --auth-root-authentication-method=socket \
            --skip-test-db </dev/null >>"$LOG_DIR/mariadb-install.out" 2>&1 ||
            fail_start "mariadb-install-db failed" "$LOG_DIR/mariadb-install.out"
    fi
    rm -f "$DB_SOCKET" "$DB_PID"
    # mariadbd does not daemonize itself: started in the background, found again by its pid file.
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" --socket="$DB_SOCKET" --pid-file="$DB_PID" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --log-error="$DB_LOG" \
        --innodb-buffer-pool-size=32M --innodb-log-file-size=16M </dev/null >>"$LOG_DIR/mariadb.out" 2>&1 &
    wait_for_daemon "$DB_PID" mariadbd db_answers ||
        fail_start "mariadbd is not answering on $DB_SOCKET" "$LOG_DIR/mariadb.out" "$DB_LOG"
    local pass
    pass=$(cat "$DB_DIR/slurm.pass")
    mariadb --no-defaults -S "$DB_SOCKET" -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" ||
        fail_start "cannot create the accounting database" "$DB_LOG"
}

dbd_answers() { timeout 10 sacctmgr -n list cluster >/dev/null 2>&1; }

start_slurmdbd() {
    if live_pid "$DBD_PID" slurmdbd >/dev/null; then
        return 0
    fi
    slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.out" 2>&1 ||
        fail_start "slurmdbd did not start" "$LOG_DIR/slurmdbd.out" "$LOG_DIR/slurmdbd.log"
    wait_for_daemon "$DBD_PID" slurmdbd dbd_answers ||
        fail_start "slurmdbd is not answering (sacctmgr)" "$LOG_DIR/slurmdbd.out" "$LOG_DIR/slurmdbd.log"
    if ! timeout 10 sacctmgr -n list cluster format=cluster 2>/dev/null | grep -qw sweep; then
        timeout 10 sacctmgr -i add cluster sweep >/dev/null 2>&1 || log "WARNING: sacctmgr add cluster sweep failed"
    fi
}

# ---- several nodes: one network + UTS + mount namespace each, on a bridge -------------------------
# The namespace holder of a node: a `sleep infinity` in namespaces other than ours.
ns_holder() {
    local pid
    pid=$(live_pid "$(ns_pidfile "$1")" sleep) || return 1
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == "sleep infinity " ]] || return 1
    [[ $(readlink "/proc/$pid/ns/net") != "$(readlink /proc/self/ns/net)" ]] || return 1
    echo "$pid"
}

in_node() {
    local pid
    pid=$(ns_holder "$1") || return 1
    shift
    nsenter -t "$pid" --net --uts --mount -- "$@"
}

start_bridge() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || fail_start "cannot create bridge $BRIDGE (needs root and CAP_NET_ADMIN)"
    fi
    if ! ip -4 addr show dev "$BRIDGE" | grep -q "inet $CTL_ADDR/"; then
        ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
}

start_node_ns() {
    local n=$1 pid host_if=sw${CTLD_PORT}h${1#node} node_if=sw${CTLD_PORT}n${1#node} i
    ns_holder "$n" >/dev/null && return 0
    unshare --uts --net --mount --propagation private -- sleep infinity </dev/null >/dev/null 2>&1 &
    pid=$!
    for ((i = 0; i < 50; i++)); do
        [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) != "$(readlink /proc/self/ns/net)" ]] && break
        sleep 0.1
    done
    echo "$pid" >"$(ns_pidfile "$n")"
    ns_holder "$n" >/dev/null || fail_start "cannot create the namespaces of $n"
    ip link del "$host_if" 2>/dev/null || true
    ip link add "$host_if" type veth peer name "$node_if" netns "$pid"
    ip link set "$host_if" master "$BRIDGE" up
    in_node "$n" sh -c "hostname $n && ip link set lo up && ip addr add $(node_addr "$n")/24 dev $node_if &&
        ip link set $node_if up && mount --bind $CONF_DIR/hosts /etc/hosts" ||
        fail_start "cannot set up the network of $n"
}

start_node_slurmd() {
    local n=$1 pidfile launched
    pidfile=$(slurmd_pidfile "$n")
    live_pid "$pidfile" slurmd >/dev/null && return 0
    launched=$(date +%s)
    in_node "$n" slurmd -f "$CONF" </dev/null >>"$LOG_DIR/slurmd-$n.out" 2>&1 ||
        fail_start "slurmd of $n did not start" "$LOG_DIR/slurmd-$n.out" "$LOG_DIR/slurmd-$n.log"
    if ! wait_for_daemon "$pidfile" slurmd slurmd_ready "$launched" "$n"; then
        timeout 5 sinfo -R >&2 || true
        fail_start "node $n did not become idle (state: $(node_state "$n" || true))" \
            "$LOG_DIR/slurmd-$n.out" "$LOG_DIR/slurmd-$n.log" "$LOG_DIR/slurmctld.log"
    fi
}

# Every process in node $1's network namespace except its holder: a node failure (kill-node) or
# what is left of one at stop.
node_processes() {
    local holder=$1 net p
    net=$(readlink "/proc/$holder/ns/net")
    for p in /proc/[0-9]*; do
        [[ ${p#/proc/} == "$holder" ]] && continue
        if [[ $(readlink "$p/ns/net" 2>/dev/null) == "$net" ]]; then echo "${p#/proc/}"; fi
    done
}

kill_node() {
    local n=$1 holder pids
    holder=$(ns_holder "$n") || die "node $n is not running (no namespace holder)"
    pids=$(node_processes "$holder" | tr '\n' ' ')
    log "killing node $n: processes $pids"
    # shellcheck disable=SC2086 # one pid per word
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    rm -f "$(slurmd_pidfile "$n")"
}

stop_nodes() {
    local n f holder pids
    for f in "$PID_DIR"/ns-node*.pid; do
        [[ -e $f ]] || continue
        n=${f##*/ns-}
        n=${n%.pid}
        holder=$(ns_holder "$n") || {
            rm -f "$(ns_pidfile "$n")"
            continue
        }
        pids=$(node_processes "$holder" | tr '\n' ' ')
        if [[ -n ${pids// /} ]]; then
            log "killing what is left on $n: $pids"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
        kill -KILL "$holder" 2>/dev/null || true # its namespaces (and the veth pair) go with it
        rm -f "$(ns_pidfile "$n")"
        log "stopped node $n (namespace holder $holder)"
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" && log "removed bridge $BRIDGE"
    fi
}

start_munged() {
    if live_pid "$MUNGE_PID" munged >/dev/null; then
        return 0
    fi
    # munged refuses group/other-writable folders and a readable key; 0755 lets any user reach the socket.
    install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
    if [[ ! -s $MUNGE_KEY ]]; then
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$MUNGE_PID"
    # Redirect all output: a daemon holding the caller's stdout would hang `subprocess.run(capture_output=...)`.
    runuser -u munge -- munged \
        --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        </dev/null >>"$LOG_DIR/munged.out" 2>&1 ||
        fail_start "munged did not start" "$LOG_DIR/munged.out" "$MUNGE_DIR/munged.log"
    wait_for_daemon "$MUNGE_PID" munged munge_works ||
        fail_start "munged is not answering on $MUNGE_SOCKET" "$LOG_DIR/munged.out" "$MUNGE_DIR/munged.log"
}

munge_works() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_slurmctld() {
    if live_pid "$CTLD_PID" slurmctld >/dev/null; then
        return 0
    fi
    # Keeps saved state (job ids, queue) across restarts; add -c here to start from scratch instead.
    slurmctld -f "$CONF" </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 ||
        fail_start "slurmctld did not start" "$LOG_DIR/slurmctld.out" "$LOG_DIR/slurmctld.log"
    # Its exit code says nothing about config errors; only a ping proves it is alive.
    wait_for_daemon "$CTLD_PID" slurmctld ctld_up ||
        fail_start "slurmctld is not answering 'scontrol ping'" "$LOG_DIR/slurmctld.out" "$LOG_DIR/slurmctld.log"
}

slurmd_ready() { (($(slurmd_registered_at "${2:-$NODE}") >= $1)) && node_usable "${2:-$NODE}"; }

start_slurmd() {
    if live_pid "$SLURMD_PID" slurmd >/dev/null; then
        return 0
    fi
    local launched
    launched=$(date +%s)
    slurmd -f "$CONF" -N "$NODE" </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 ||
        fail_start "slurmd did not start" "$LOG_DIR/slurmd.out" "$LOG_DIR/slurmd.log"
    # After a restart the controller reports the node state it saved (often "idle") before slurmd has
    # registered, so also wait for the registration of this slurmd.
    if ! wait_for_daemon "$SLURMD_PID" slurmd slurmd_ready "$launched"; then
        timeout 5 sinfo -R >&2 || true
        fail_start "node $NODE did not become idle (state: $(node_state || true))" \
            "$LOG_DIR/slurmd.out" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log"
    fi
}

cmd_start() {
    require_root start
    command -v slurmctld >/dev/null || die "slurm is not installed; run: $0 install"
    if is_up; then
        # Warn when the running cluster was started with different settings (e.g. another array size).
        if ! cmp -s "$CONF" <(render_slurm_conf); then
            log "WARNING: running config differs from the requested one; run '$0 stop' then '$0 start'"
        fi
        log "already up (SLURM_CONF=$CONF)"
        return 0
    fi
    local t0=$SECONDS n
    write_config
    start_munged
    # The bridge before slurmctld, which listens on its address.
    ((NODES == 1)) || start_bridge
    if ((ACCOUNTING)); then
        start_mariadb
        start_slurmdbd
    fi
    if ((NODES == 1)); then
        start_slurmctld
        start_slurmd
        log "up in $((SECONDS - t0)) s: node $NODE $(node_state), partition debug (SLURM_CONF=$CONF)"
        return 0
    fi
    start_slurmctld
    for n in "${NODE_NAMES[@]}"; do
        start_node_ns "$n"
        start_node_slurmd "$n"
    done
    log "up in $((SECONDS - t0)) s: nodes $(timeout 5 sinfo -h -N -o '%N=%T' | sort -u | tr '\n' ' ')partitions debug, high" \
        "(SLURM_CONF=$CONF)"
}

# Stops daemons given as name:pidfile together: SIGTERM, then SIGKILL after 10 s. Each takes about
# 2 s to exit, so signalling them at once saves time. Waits until they are really gone.
stop_daemons() {
    local entry name pidfile pid i j
    local -a pids=() names=()
    for entry in "$@"; do
        name=${entry%%:*} pidfile=${entry#*:}
        if pid=$(live_pid "$pidfile" "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid") names+=("$name")
        fi
        rm -f "$pidfile"
    done
    for i in "${!pids[@]}"; do
        for ((j = 0; j < 100; j++)); do
            [[ -d /proc/${pids[i]} ]] || break
            sleep 0.1
        done
        if [[ -d /proc/${pids[i]} ]]; then
            log "${names[i]} (${pids[i]}) ignored SIGTERM for 10 s; killing it"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
        log "stopped ${names[i]} (${pids[i]})"
    done
}

# A process and all its descendants, parents first.
process_tree() {
    local pid=$1 child
    echo "$pid"
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        process_tree "$child"
    done
}

# Our slurmstepds: those writing to our slurmd log. (Their environment would say SLURM_CONF too, but
# slurmstepd overwrites that memory when it sets its process title.) Nothing else is ever signalled.
our_stepds() {
    local p fd comm
    for p in /proc/[0-9]*; do
        # Not $(<file 2>/dev/null): with a redirection added, bash no longer reads the file.
        comm=$(cat "$p/comm" 2>/dev/null) || continue
        [[ $comm == slurmstepd* ]] || continue
        for fd in "$p"/fd/*; do
            if [[ $(readlink "$fd" 2>/dev/null) == "$LOG_DIR"/slurmd?(-node+([0-9])).log ]]; then
                echo "${p#/proc/}"
                break
            fi
        done
    done
}

# Job steps outlive slurmd; their job processes go with them, or they would linger as orphans.
kill_stray_stepds() {
    local stepd tree
    for stepd in $(our_stepds); do
        tree=$(process_tree "$stepd" | tr '\n' ' ')
        log "killing leftover slurmstepd $stepd and its processes: $tree"
        # shellcheck disable=SC2086 # one pid per word
        kill -KILL $tree 2>/dev/null || true
    done
}

# Job ids (array tasks as 12_3 or 12_[4-10]) in the given squeue states.
jobs_in() { timeout 5 squeue -h -t "$1" -o '%i' 2>/dev/null | tr '\n' ' ' || true; }

# Polls for at most $1 seconds until no job is running or completing.
jobs_gone_within() {
    local i
    for ((i = 0; i < $1 * 5; i++)); do
        [[ -z $(jobs_in RUNNING,COMPLETING,CONFIGURING) ]] && return 0
        sleep 0.2
    done
    return 1
}

# End every job while slurmd can still clean up: job steps outlive slurmd.
cancel_all_jobs() {
    local pending running
    pending=$(jobs_in PENDING,REQUEUED,SUSPENDED)
    running=$(jobs_in RUNNING,CONFIGURING,COMPLETING)
    [[ -n $pending$running ]] || return 0
    log "cancelling jobs: $pending$running"
    # Pending first, so nothing new starts when a running job frees its CPUs.
    # shellcheck disable=SC2086 # one job id per word
    [[ -z $pending ]] || scancel $pending 2>/dev/null || true
    # shellcheck disable=SC2086
    [[ -z $running ]] || scancel $running 2>/dev/null || true
    jobs_gone_within 5 && return 0
    # A job that ignores SIGTERM gets SIGKILL only after KillWait (30 s), and scancel --signal=KILL
    # counts as a cancel, so it waits just as long: kill its processes ourselves.
    log "jobs ignored SIGTERM, killing their processes: $(jobs_in RUNNING,COMPLETING,CONFIGURING)"
    local stepd
    for stepd in $(our_stepds); do
        # shellcheck disable=SC2046 # one pid per word
        kill -KILL $(process_tree "$stepd" | tail -n +2) 2>/dev/null || true
    done
    jobs_gone_within 10 || log "WARNING: jobs still active: $(jobs_in RUNNING,COMPLETING,CONFIGURING)"
}

# Every daemon and namespace this state folder's pid files name, whether or not it answers.
stop_everything() {
    local f slurmds=("slurmd:$SLURMD_PID")
    # The nodes from their pid files, so a stop without LOCAL_SLURM_NODES still finds them.
    for f in "$PID_DIR"/slurmd-node*.pid; do [[ -e $f ]] && slurmds+=("slurmd:$f"); done
    # slurmd first: it cleans up job steps. The controller saves its state without needing munge.
    stop_daemons "${slurmds[@]}"
    kill_stray_stepds
    stop_nodes
    stop_daemons "slurmctld:$CTLD_PID"
    stop_daemons "slurmdbd:$DBD_PID" "mariadbd:$DB_PID"
    stop_daemons "munged:$MUNGE_PID"
}

cmd_stop() {
    require_root stop
    if live_pid "$CTLD_PID" slurmctld >/dev/null && [[ -r $CONF ]] && ctld_up; then
        cancel_all_jobs
    fi
    stop_everything
}

cmd_status() {
    if is_up; then
        if ((NODES == 1)); then
            echo "up: node $NODE $(node_state) (SLURM_CONF=$CONF)"
        else
            echo "up: nodes $(timeout 5 sinfo -h -N -o '%N=%T' | sort -u | tr '\n' ' ')(SLURM_CONF=$CONF)"
        fi
        return 0
    fi
    local states="" entry n entries=("munged:$MUNGE_PID" "slurmctld:$CTLD_PID")
    ((ACCOUNTING)) && entries+=("mariadbd:$DB_PID" "slurmdbd:$DBD_PID")
    if ((NODES == 1)); then
        entries+=("slurmd:$SLURMD_PID")
    else
        for n in "${NODE_NAMES[@]}"; do entries+=("slurmd:$(slurmd_pidfile "$n")"); done
    fi
    for entry in "${entries[@]}"; do
        if live_pid "${entry#*:}" "${entry%%:*}" >/dev/null; then
            states+=" ${entry%%:*}=running"
        else
            states+=" ${entry%%:*}=stopped"
        fi
    done
    echo "down:$states"
    return 1
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

for value in "$MAX_ARRAY_SIZE" "${MAX_JOB_COUNT:-0}" "${MIN_JOB_AGE:-0}" "$START_TIMEOUT" "$CTLD_PORT" "$SLURMD_PORT" "$NODES" "$ACCOUNTING" "$DBD_PORT"; do
    [[ $value =~ ^[0-9]+$ ]] || die "LOCAL_SLURM_* settings must be whole numbers, got '$value'"
done
((NODES >= 1 && NODES <= 9)) || die "LOCAL_SLURM_NODES must be 1 to 9, got '$NODES'"
((ACCOUNTING <= 1)) || die "LOCAL_SLURM_ACCOUNTING must be 0 or 1, got '$ACCOUNTING'"
[[ $SUBNET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "LOCAL_SLURM_SUBNET must be three octets like 10.223.23, got '$SUBNET'"

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
kill-node)
    require_root kill-node
    ((NODES > 1)) || die "kill-node needs LOCAL_SLURM_NODES > 1"
    [[ ${2:-} =~ ^node[0-9]$ ]] || die "kill-node NAME: one of ${NODE_NAMES[*]}"
    kill_node "$2"
    ;;
*)
    sed -n '5,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
