#!/usr/bin/env bash
# A real single-node Slurm cluster on 127.0.0.1 for hhscan's tests and CI (Debian/Ubuntu, as root):
# munge, MariaDB, slurmdbd (accounting: submitit needs sacct), slurmctld, slurmd, with 2 emulated GPUs.
#
#   scripts/slurm-cluster.sh install   apt-get the packages (once per machine)
#   scripts/slurm-cluster.sh start     write the configuration under $HHSCAN_SLURM_DIR and start the daemons
#   scripts/slurm-cluster.sh stop      stop them by the pids they wrote (never by name)
#   scripts/slurm-cluster.sh status    daemons and node state
#   scripts/slurm-cluster.sh env       print 'export SLURM_CONF=…' for clients (eval "$(… env)")
#   scripts/slurm-cluster.sh ctld-lose-state   stop slurmd, restart slurmctld with an empty state (tests)
#
# Every start is a fresh cluster in a fresh state directory (job ids restart at 1; hhscan never reuses a
# submitit folder across clusters, see slurm-localhost notes).
set -euo pipefail

DIR=${HHSCAN_SLURM_DIR:-/tmp/hhscan-slurm}
CLUSTER=${HHSCAN_SLURM_CLUSTER:-hhscan}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
DB_PASSWORD=hhscan-local-only

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
     && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    log "packages already installed"; return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
  log "installed: $(slurmctld -V)"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq 1 $((limit * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $what"; return 1
}

write_configuration() {
  mkdir -p "$DIR"/{etc,log,spool/ctld,spool/d,run,dev,db,mysql-run}
  # Emulated GPUs: gres File= entries must be character devices (a copy of /dev/null's numbers).
  for i in 0 1; do [ -c "$DIR/dev/nvidia$i" ] || mknod "$DIR/dev/nvidia$i" c 1 3; done
  cat > "$DIR/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=2
# Memory is enforced without cgroups: the gatherer samples each step's RSS and kills it past its --mem.
JobAcctGatherParams=OverMemoryKill
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=1
MaxArraySize=1001
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/etc/gres.conf" <<EOF
NodeName=$HOST Name=gpu File=$DIR/dev/nvidia[0-1]
EOF
  cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  echo "export SLURM_CONF=$DIR/etc/slurm.conf" > "$DIR/env"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then log "munge already running"; return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 || \
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  # --force: a munged killed with the machine's last session leaves its socket behind.
  su -s /bin/sh munge -c "munged --force --pid-file=/run/munge/munged.pid"
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
  local datadir=$DIR/db run=$DIR/mysql-run
  chown -R mysql:mysql "$datadir" "$run"
  if [ ! -d "$datadir/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=socket >/dev/null 2>&1
  fi
  if ! pid_alive "$run/mariadb.pid"; then
    # The socket, pid and log must sit in a directory owned by mysql, or it dies without a log.
    setsid mariadbd --user=mysql --datadir="$datadir" --socket="$run/mysqld.sock" --bind-address=127.0.0.1 \
      --port=3306 --pid-file="$run/mariadb.pid" --log-error="$run/mariadb.log" --skip-name-resolve \
      </dev/null >/dev/null 2>&1 &
  fi
  wait_for 30 mariadb mariadb --socket="$run/mysqld.sock" -e 'SELECT 1'
  mariadb --socket="$run/mysqld.sock" <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start() {
  install_packages
  if pid_alive "$DIR/run/slurmctld.pid"; then log "already running (SLURM_CONF=$DIR/etc/slurm.conf)"; return; fi
  # A fresh cluster every time: stop leftovers by their pid files, then start from an empty state directory.
  stop --wipe
  write_configuration
  export SLURM_CONF=$DIR/etc/slurm.conf
  start_munge
  start_mariadb
  # slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF.
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  slurmctld -f "$SLURM_CONF"
  wait_for 30 slurmctld scontrol ping
  slurmd -f "$SLURM_CONF"
  wait_for 30 "node idle" sh -c "sinfo -h -N -o %t | grep -qx idle"
  wait_for 30 accounting sacct -n -a -X
  log "up: $(sinfo -h -o '%P %D %t %G') — export SLURM_CONF=$SLURM_CONF"
}

ctld_lose_state() {
  # What a controller failover without its state directory does: the controller forgets every job and job ids
  # start again at 1 (accounting keeps the old rows). slurmd is stopped first and left stopped, so running
  # tasks keep running unknown to Slurm (their slurmstepd lives on) until 'slurmd -f $SLURM_CONF' brings the
  # node back and the controller kills them as orphans.
  export SLURM_CONF=$DIR/etc/slurm.conf
  stop_pidfile "$DIR/run/slurmd.pid" slurmd
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
  rm -rf "$DIR/spool/ctld" && mkdir -p "$DIR/spool/ctld"
  slurmctld -f "$SLURM_CONF"
  wait_for 30 slurmctld scontrol ping
  log "controller restarted without its state; slurmd stopped"
}

stop_pidfile() {
  local file=$1 name=$2
  if pid_alive "$file"; then
    local pid; pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "stopped $name ($pid)"
  fi
}

stop() {
  stop_pidfile "$DIR/run/slurmd.pid" slurmd
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
  stop_pidfile "$DIR/run/slurmdbd.pid" slurmdbd
  stop_pidfile "$DIR/mysql-run/mariadb.pid" mariadb
  if [ "${1:-}" = "--wipe" ]; then rm -rf "$DIR"; log "wiped $DIR"; fi
}

status() {
  local ok=0
  for pair in slurmd:run/slurmd.pid slurmctld:run/slurmctld.pid slurmdbd:run/slurmdbd.pid mariadb:mysql-run/mariadb.pid; do
    if pid_alive "$DIR/${pair#*:}"; then echo "${pair%%:*}: running ($(cat "$DIR/${pair#*:}"))"
    else echo "${pair%%:*}: stopped"; ok=1; fi
  done
  if [ $ok -eq 0 ]; then SLURM_CONF=$DIR/etc/slurm.conf sinfo -N -o '%N %t %G'; fi
  return $ok
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) shift; stop "${1:-}" ;;
  restart) stop; start ;;
  ctld-lose-state) ctld_lose_state ;;
  status) status ;;
  env) echo "export SLURM_CONF=$DIR/etc/slurm.conf" ;;
  *) echo "usage: $0 install|start|stop [--wipe]|restart|status|env|ctld-lose-state" >&2; exit 2 ;;
esac
