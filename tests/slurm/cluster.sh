#!/usr/bin/env bash
# A real single-host Slurm 22.05 (Debian 12's slurm-wlm) for the `slurm` tests, and by hand:
#
#     sudo tests/slurm/cluster.sh start     # install what is missing, start every daemon (idempotent)
#     tests/slurm/cluster.sh status         # which daemons run, and sinfo
#     sudo tests/slurm/cluster.sh stop      # stop the daemons this script started (by their pid files)
#
# What it runs, as plain daemons (no systemd): munged; MariaDB + slurmdbd, because NeMo-Run reads a
# job's state only through `sacct`; slurmctld; and DSV3_SLURM_NODES slurmd instances on this one host
# (NodeName n1..nN, one port each; default 128, the largest recipe), each with 8 fake GPUs (gres backed by `mknod c 1 3` device files,
# so `--gpus-per-node` is schedulable). libpmix-dev is installed before slurmd starts so `--mpi=pmix`
# works. There is no pyxis: fake_pyxis.c, a SPANK plugin compiled here, accepts pyxis's
# `--container-*` options and runs the task on the host with the mounts and workdir applied.
#
# Everything the script writes lives in $DSV3_SLURM_STATE (default /var/tmp/dsv3-slurm), except
# /etc/slurm/{slurm,gres,slurmdbd}.conf (the place the Slurm commands read) and the munge key.
# It refuses to overwrite a slurm.conf it did not write.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${DSV3_SLURM_STATE:-/var/tmp/dsv3-slurm}
NODES=${DSV3_SLURM_NODES:-128}
GPUS_PER_NODE=8
ACCOUNT=dsv3ci # the tests submit with --account dsv3ci; associations are enforced like a real site
CLUSTER=dsv3ci
CONF_DIR=/etc/slurm
MARK="# written by dsv3-recipes tests/slurm/cluster.sh"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server libpmix-dev libslurm-dev gcc libc6-dev)
HOST=$(hostname -s)

log() { echo "slurm-cluster: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

alive() { # alive PIDFILE: the process named in PIDFILE runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() { # wait_for SECONDS WHAT COMMAND...: retry COMMAND every 0.2 s
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up in time (logs: $STATE/log)"
    sleep 0.2
  done
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
  if [ -f "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script; not touching it"
  fi
  mkdir -p "$CONF_DIR" "$STATE"/{log,ctld,spool,dev}
  for i in $(seq 1 "$NODES"); do mkdir -p "$STATE/tmp/n$i"; done
  local last=$((17000 + NODES)) conf
  conf=$(mktemp)
  cat >"$conf" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
# pmix makes its per-step client dir under TmpFS: one per node, or the slurmds of one host collide.
TmpFS=$STATE/tmp/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
# No cgroups in a plain container: track processes by parent id, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
MpiDefault=none
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The fake nodes claim more CPUs than the host has: trust this file, not the hardware.
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
PlugStackConfig=$STATE/plugstack.conf
NodeName=n[1-$NODES] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[17001-$last] CPUs=8 Gres=gpu:$GPUS_PER_NODE State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if alive "$STATE/slurmctld.pid" && ! cmp -s "$conf" "$CONF_DIR/slurm.conf"; then
    rm -f "$conf"
    die "slurmctld runs with another slurm.conf (DSV3_SLURM_NODES changed?): stop it first"
  fi
  mv "$conf" "$CONF_DIR/slurm.conf"
  chmod 644 "$CONF_DIR/slurm.conf"
  cat >"$CONF_DIR/gres.conf" <<EOF
$MARK
AutoDetect=off
NodeName=n[1-$NODES] Name=gpu File=$STATE/dev/gpu[0-$((GPUS_PER_NODE - 1))]
EOF
  # slurmdbd insists on a private config owned by SlurmUser. MariaDB's root@localhost logs in by unix
  # socket, and slurmdbd runs as root: no password anywhere.
  (
    umask 077
    cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
  )
  echo "required $STATE/fake_pyxis.so" >"$STATE/plugstack.conf"
  for i in $(seq 0 $((GPUS_PER_NODE - 1))); do
    [ -e "$STATE/dev/gpu$i" ] || mknod "$STATE/dev/gpu$i" c 1 3 # /dev/null's numbers: a GPU in name only
  done
}

resolve_nodes() { # the node names resolve, as on a real cluster (torch.distributed dials MASTER_ADDR)
  grep -qF "$MARK" /etc/hosts && return
  echo "127.0.0.1 $(seq -f 'n%g' -s ' ' 1 "$NODES") $MARK" >>/etc/hosts
}

unresolve_nodes() { # rewritten in place: /etc/hosts may be a bind mount
  local kept
  kept=$(grep -vF "$MARK" /etc/hosts) || true
  printf '%s\n' "$kept" >/etc/hosts
}

build_plugin() {
  local src=$HERE/fake_pyxis.c so=$STATE/fake_pyxis.so
  if [ ! -f "$so" ] || [ "$src" -nt "$so" ]; then
    gcc -std=gnu11 -Wall -Werror -O2 -shared -fPIC -o "$so" "$src"
  fi
}

start_munge() {
  alive /run/munge/munged.pid && return
  [ -s /etc/munge/munge.key ] || {
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  }
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged munge -n
}

start_mariadb() {
  local datadir=$STATE/mysql run=$STATE/mysql-run # MariaDB runs as mysql: its pid and log go in run/
  if ! alive "$run/mariadb.pid"; then
    if [ ! -d "$datadir/mysql" ]; then
      mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=socket \
        --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1
    fi
    mkdir -p /run/mysqld "$run"
    chown mysql:mysql /run/mysqld "$run"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$datadir" --skip-networking \
      --socket=/run/mysqld/mysqld.sock --pid-file="$run/mariadb.pid" \
      --innodb-buffer-pool-size=64M --log-error="$run/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb-admin --socket=/run/mysqld/mysqld.sock ping
  fi
}

start_slurmdbd() {
  alive "$STATE/slurmdbd.pid" && return
  /usr/sbin/slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || true
  sacctmgr -i add account "$ACCOUNT" description="dsv3-recipes CI" >/dev/null || true
  sacctmgr -i add user root account="$ACCOUNT" defaultaccount="$ACCOUNT" >/dev/null || true
}

start_slurm() {
  alive "$STATE/slurmctld.pid" || /usr/sbin/slurmctld
  wait_for 30 slurmctld scontrol ping
  for i in $(seq 1 "$NODES"); do
    alive "$STATE/slurmd-n$i.pid" || /usr/sbin/slurmd -N "n$i"
  done
  wait_for 120 "all $NODES slurmd" all_idle
}

all_idle() {
  [ "$(sinfo -h -N -t idle -o %N | sort -u | wc -l)" -eq "$NODES" ]
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (apt-get, mknod, daemons as root)"
  local t0=$SECONDS
  install_packages
  write_configs
  resolve_nodes
  build_plugin
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  log "up in $((SECONDS - t0)) s: $NODES nodes x $GPUS_PER_NODE fake GPUs, account $ACCOUNT, partition ci"
}

stop_pidfiles() { # stop_pidfiles PIDFILE...: SIGTERM them all, then wait up to 30 s for each to exit
  local pids=() pid
  for pidfile in "$@"; do
    if alive "$pidfile"; then pids+=("$(cat "$pidfile")"); fi
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  kill "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      [ $SECONDS -lt $deadline ] || { log "pid $pid did not stop in 30 s" && return 1; }
      sleep 0.1
    done
  done
}

cmd_stop() { # in reverse order of start: nodes, controller, accounting, database, munge
  stop_pidfiles "$STATE"/slurmd-*.pid &&
    stop_pidfiles "$STATE/slurmctld.pid" &&
    stop_pidfiles "$STATE/slurmdbd.pid" &&
    stop_pidfiles "$STATE/mysql-run/mariadb.pid" &&
    stop_pidfiles /run/munge/munged.pid &&
    unresolve_nodes &&
    log "stopped"
}

cmd_status() {
  local down=0
  for daemon in slurmctld:"$STATE/slurmctld.pid" slurmdbd:"$STATE/slurmdbd.pid" \
    mariadb:"$STATE/mysql-run/mariadb.pid" munged:/run/munge/munged.pid; do
    if alive "${daemon#*:}"; then echo "${daemon%%:*}: running"; else echo "${daemon%%:*}: stopped" && down=1; fi
  done
  local up=0
  for pidfile in "$STATE"/slurmd-*.pid; do alive "$pidfile" && up=$((up + 1)); done
  echo "slurmd: $up of $NODES running"
  [ "$up" -eq "$NODES" ] || down=1
  [ $down -eq 0 ] && sinfo
  return $down
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
