#!/usr/bin/env bash
# A single-node SLURM cluster with accounting on this machine (Debian 12, root, no systemd),
# for running madyn's workflow through profiles/slurm and for tests/test_slurm.py.
#
#   profiles/slurm/local-cluster.sh start    install (apt) if needed, start munge, MariaDB,
#                                            slurmdbd, slurmctld, slurmd; wait for the node
#   profiles/slurm/local-cluster.sh status   what runs, and the node's state
#   profiles/slurm/local-cluster.sh stop     stop only the daemons this script started
#
# Idempotent: `start` on a running cluster checks it and changes nothing. Daemons this script
# starts are recorded in $MADYN_SLURM_STATE (default /var/lib/madyn-slurm/<name>.pid).
# Exit codes: 0 ok, 1 a daemon did not come up, 2 usage, 3 cannot install packages (no apt,
# apt fails, or not root).
# Cluster name "madyn", partition "main", account "root" (the names profiles/slurm uses).
# slurmctld's StateSaveLocation and slurmd's spool are folders of its own under $MADYN_SLURM_STATE
# (not the shared /var/lib/slurm/slurmctld, where another cluster's state, with another
# ClusterName, makes slurmctld refuse to start).
set -euo pipefail

STATE=${MADYN_SLURM_STATE:-/var/lib/madyn-slurm}
CLUSTER=madyn
PARTITION=main
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)   # stop order
T0=$EPOCHREALTIME

log() { printf '[local-cluster %ss] %s\n' \
        "$(awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN { printf "%6.1f", a - b }')" "$*"; }
die() { log "error: $2"; exit "$1"; }

# --- pid bookkeeping --------------------------------------------------------------------------
alive() {  # alive PID NAME: the process runs (not a zombie) and its command is NAME
    local pid=$1 name=$2 st
    [[ -r /proc/$pid/stat ]] || return 1
    st=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [[ $st != Z && $st != X ]] || return 1
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *"$name"* ]]
}
recorded() { local f=$STATE/$1.pid; [[ -f $f ]] && alive "$(cat "$f")" "$1"; }
running_pid() {  # a live (not zombie) instance of NAME, ours or not
    local pid
    for pid in $(pgrep -x "$1" || true); do alive "$pid" "$1" && { echo "$pid"; return; }; done
    return 0
}
record() { echo "$2" >"$STATE/$1.pid"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die 1 "$what did not come up within ${limit}s"
        sleep 0.5
    done
}

write_if_changed() {  # write_if_changed FILE MODE < content: 0 if unchanged, 1 if written
    local file=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then rm -f "$tmp"; return 0; fi
    install -m "$mode" "$tmp" "$file"; rm -f "$tmp"
    log "wrote $file"
    return 1
}

# --- steps --------------------------------------------------------------------------------------
install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    if ((${#missing[@]} == 0)); then log "packages present"; return; fi
    command -v apt-get >/dev/null || die 3 "apt-get not found; cannot install ${missing[*]}"
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$STATE/apt.log" 2>&1
    then
        log "apt-get install failed; running apt-get update first"
        apt-get update -q >>"$STATE/apt.log" 2>&1 \
            || die 3 "apt-get update failed (see $STATE/apt.log)"
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE/apt.log" 2>&1 \
            || die 3 "apt-get install ${PACKAGES[*]} failed (see $STATE/apt.log)"
    fi
    log "packages installed"
}

ensure_hostname() {
    HOST=$(hostname -s)
    getent hosts "$HOST" >/dev/null || { echo "127.0.0.1 $HOST" >>/etc/hosts; log "added $HOST to /etc/hosts"; }
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then log "munge runs"; return; fi
    install -d -m 0700 -o munge -g munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        head -c 1024 /dev/urandom >/etc/munge/munge.key
        log "created /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    install -d -m 0755 -o munge -g munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 munged bash -c 'munge -n | unmunge'
    record munged "$(cat /run/munge/munged.pid)"
    log "started munged (pid $(cat "$STATE/munged.pid"))"
}

db_password() {
    [[ -s $STATE/db.password ]] || { (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db.password"); }
    cat "$STATE/db.password"
}

start_mariadb() {
    local pw; pw=$(db_password)
    if ! mariadb-admin ping >/dev/null 2>&1; then
        install -d -m 0755 -o mysql -g mysql /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/mariadb-install.log" 2>&1 \
                || die 1 "mariadb-install-db failed (see $STATE/mariadb-install.log)"
            log "initialised /var/lib/mysql"
        fi
        setsid mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=127.0.0.1 \
            --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
            >>"$STATE/mariadbd.log" 2>&1 </dev/null &
        record mariadbd $!
        wait_for 60 mariadbd mariadb-admin ping
        log "started mariadbd (pid $(cat "$STATE/mariadbd.pid"))"
    else
        log "mariadbd runs"
    fi
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
                ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
                CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
        || die 1 "cannot create the slurm database user in MariaDB"
}

write_configs() {  # sets CHANGED=1 when a SLURM config file changed
    local cpus mem
    cpus=$(nproc)
    mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    install -d -m 0755 /etc/slurm /var/log/slurm "$STATE/slurmctld" "$STATE/slurmd"
    CHANGED=0
    write_if_changed /etc/slurm/slurmdbd.conf 0600 <<EOF || CHANGED=1
# written by madyn profiles/slurm/local-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
    write_if_changed /etc/slurm/slurm.conf 0644 <<EOF || CHANGED=1
# written by madyn profiles/slurm/local-cluster.sh: one node, memory scheduled not enforced
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
MessageTimeout=3
DefMemPerCPU=1000
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() {  # start_daemon NAME PIDFILE READY-COMMAND...
    local name=$1 pidfile=$2; shift 2
    local pid; pid=$(running_pid "$name")
    if [[ -n $pid && $CHANGED == 1 ]] && recorded "$name"; then
        log "config changed: restarting $name"
        stop_one "$name"; pid=""
    fi
    if [[ -n $pid ]]; then log "$name runs (pid $pid)"; return; fi
    rm -f "$pidfile"
    "$name" || die 1 "$name failed to start (see /var/log/slurm/$name.log)"
    wait_for 30 "$name pid file" test -s "$pidfile"
    record "$name" "$(cat "$pidfile")"
    wait_for 60 "$name" "$@"
    log "started $name (pid $(cat "$STATE/$name.pid"))"
}

node_idle() { sinfo -h -n "$HOST" -o %t | grep -Eq '^(idle|mix|alloc)'; }

ensure_account() {
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -n -P show assoc cluster="$CLUSTER" user=root format=account | grep -qx root \
        || { sacctmgr -i add account root cluster="$CLUSTER" >/dev/null 2>&1 || true
             sacctmgr -i add user root account=root cluster="$CLUSTER" >/dev/null; }
    log "accounting: cluster $CLUSTER, account root"
}

start() {
    if [[ $(id -u) != 0 ]]; then  # a non-root user can use a cluster root started
        HOST=$(hostname -s)
        if scontrol ping 2>/dev/null | grep -q UP && node_idle && sacct -n -X -S now >/dev/null 2>&1
        then log "ready (checked only, not root): $(sinfo -h -o '%P %a %D %t')"; return; fi
        die 3 "must run as root (installs packages, starts daemons)"
    fi
    install -d -m 0700 "$STATE"
    install_packages
    ensure_hostname
    start_munge
    start_mariadb
    write_configs
    start_daemon slurmdbd /run/slurmdbd.pid sacctmgr -n list cluster
    start_daemon slurmctld /run/slurmctld.pid scontrol ping
    start_daemon slurmd /run/slurmd.pid node_idle
    if ! node_idle; then
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        wait_for 60 "node $HOST idle" node_idle
    fi
    ensure_account
    log "ready: $(sinfo -h -o '%P %a %D %t %c CPUs %m MB')"
}

stop_one() {
    local name=$1 f=$STATE/$1.pid pid
    [[ -f $f ]] || return 0
    pid=$(cat "$f")
    if alive "$pid" "$name"; then
        kill "$pid"
        for _ in $(seq 1 40); do alive "$pid" "$name" || break; sleep 0.25; done
        if alive "$pid" "$name"; then kill -9 "$pid"; log "killed $name (pid $pid)"
        else log "stopped $name (pid $pid)"; fi
    fi
    rm -f "$f"
}

stop() {
    [[ -d $STATE ]] || { log "nothing recorded in $STATE"; return; }
    for d in "${DAEMONS[@]}"; do stop_one "$d"; done
}

status() {
    local d pid rc=0
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        pid=$(running_pid "$d")
        if [[ -z $pid ]]; then echo "$d: not running"; rc=1
        elif recorded "$d"; then echo "$d: running (pid $pid, started by this script)"
        else echo "$d: running (pid $pid, not started by this script)"; fi
    done
    if scontrol ping 2>/dev/null | grep -q UP; then sinfo -h -o '%P %a %D %t %c CPUs %m MB'
    else echo "slurmctld: not answering"; rc=1; fi
    return $rc
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
