#!/usr/bin/env bash
# A real single-node SLURM cluster (Debian slurm-wlm + munge) for CI and tests.
#
# Usage:
#   scripts/local_slurm.sh install   # apt-get the packages (quick no-op when present)
#   scripts/local_slurm.sh start     # write config, start munged + slurmctld + slurmd, wait until usable
#   scripts/local_slurm.sh stop      # cancel all jobs, then stop slurmd, slurmctld, munged
#   scripts/local_slurm.sh status    # exit 0 if the controller answers and the node is usable
#   scripts/local_slurm.sh env       # print `export SLURM_CONF=...`; use: eval "$(scripts/local_slurm.sh env)"
#
# Environment:
#   LOCAL_SLURM_DIR             state folder (default /tmp/sweep-slurm)
#   LOCAL_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 11: small on purpose, so array chunking gets tested)
#   LOCAL_SLURM_START_TIMEOUT   seconds `start` waits for each daemon (default 30)
#   LOCAL_SLURM_CTLD_PORT       slurmctld port (default 6817)
#   LOCAL_SLURM_SLURMD_PORT     slurmd port (default 6818)
#
# Everything lives in the state folder and clients find it through SLURM_CONF, so /etc/slurm and
# /etc/munge are never touched. The machine has no systemd and no usable cgroups, hence every daemon
# is started by hand and the config avoids cgroup plugins.
set -euo pipefail

# Slurm wants absolute paths in its config.
STATE_DIR=$(realpath -m "${LOCAL_SLURM_DIR:-/tmp/sweep-slurm}")
MAX_ARRAY_SIZE=${LOCAL_SLURM_MAX_ARRAY_SIZE:-11}
START_TIMEOUT=${LOCAL_SLURM_START_TIMEOUT:-30}
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}

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

# Daemons and clients alike read this; exporting it here keeps the script independent of /etc/slurm.
export SLURM_CONF=$CONF

PACKAGES=(slurmctld slurmd slurm-client munge)

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
    stop_daemons "slurmd:$SLURMD_PID" "slurmctld:$CTLD_PID" "munged:$MUNGE_PID"
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

node_state() { timeout 5 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1; }

node_usable() {
    case $(node_state) in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
    esac
}

# Epoch seconds at which the running slurmd registered with the controller (0 if unknown).
slurmd_registered_at() {
    local t
    t=$(timeout 5 scontrol -o show node "$NODE" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)
    date -d "$t" +%s 2>/dev/null || echo 0
}

# Pid files first: a client whose SLURM_CONF is missing retries for 60 s, and scontrol ping waits out
# MessageTimeout when nothing listens, so only ask slurmctld once its process exists.
is_up() {
    live_pid "$CTLD_PID" slurmctld >/dev/null && live_pid "$SLURMD_PID" slurmd >/dev/null &&
        [[ -r $CONF ]] && ctld_up && node_usable
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
    cat <<EOF
# Generated by scripts/local_slurm.sh; rewritten on every start.
ClusterName=sweep
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also bounds how long a requeued job waits before it may start again (default ~121 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Keep the site's /etc/slurm/plugstack.conf (SPANK plugins) out of our cluster.
PlugStackConfig=$CONF_DIR/plugstack.conf
# No cgroups and no slurmdbd on this machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
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
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$(nproc) RealMemory=$(real_memory_mb) Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

render_gres_conf() {
    cat <<EOF
# Generated by scripts/local_slurm.sh. Two fake GPUs backed by /dev/null-like character devices.
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE_DIR/dev/gpu[0-1]
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

slurmd_ready() { (($(slurmd_registered_at) >= $1)) && node_usable; }

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
    local t0=$SECONDS
    write_config
    start_munged
    start_slurmctld
    start_slurmd
    log "up in $((SECONDS - t0)) s: node $NODE $(node_state), partition debug (SLURM_CONF=$CONF)"
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
            if [[ $(readlink "$fd" 2>/dev/null) == "$LOG_DIR/slurmd.log" ]]; then
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

cmd_stop() {
    require_root stop
    if live_pid "$CTLD_PID" slurmctld >/dev/null && [[ -r $CONF ]] && ctld_up; then
        cancel_all_jobs
    fi
    # slurmd first: it cleans up job steps. The controller saves its state without needing munge.
    stop_daemons "slurmd:$SLURMD_PID"
    kill_stray_stepds
    stop_daemons "slurmctld:$CTLD_PID" "munged:$MUNGE_PID"
}

cmd_status() {
    if is_up; then
        echo "up: node $NODE $(node_state) (SLURM_CONF=$CONF)"
        return 0
    fi
    local states="" entry
    for entry in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
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

for value in "$MAX_ARRAY_SIZE" "$START_TIMEOUT" "$CTLD_PORT" "$SLURMD_PORT"; do
    [[ $value =~ ^[0-9]+$ ]] || die "LOCAL_SLURM_* settings must be whole numbers, got '$value'"
done

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    sed -n '3,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
