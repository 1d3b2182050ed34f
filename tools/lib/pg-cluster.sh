# shellcheck shell=bash
# A throwaway PostgreSQL cluster for tests and the demo (sourced, never run).
# Needs tools/lib/common.sh sourced first (logging, die).
#
#   pg_cluster_start DIR PORT   initdb into DIR/data and start it; wait until ready
#   pg_cluster_stop DIR         stop it (fast shutdown, then signals if need be)
#
# DIR is a throwaway folder for this cluster alone (make it with mktemp -d); the
# caller removes it after pg_cluster_stop. The server listens on 127.0.0.1:PORT and
# on a unix socket in DIR; authentication is "trust" for local and 127.0.0.1
# connections, but scram-sha-256 over TCP for the role pwtest; the superuser
# is "postgres". fsync is off: the data is disposable.
#
# PostgreSQL refuses to run as root, so the server runs as the OS user postgres
# (runuser); clients (psql, pg_dump, pgbench, tests) may run as root.
#
# After pg_cluster_start these are exported:
#   PGHOST=127.0.0.1 PGPORT=<port> PGUSER=postgres    for libpq clients
#   PG_CLUSTER_DIR=DIR PG_CLUSTER_SOCKET=DIR PG_CLUSTER_PORT=<port>
#   PATH with the server's bin folder first (pg_dump, psql, pgbench of that version)
#
# Leftovers: a cluster still running in DIR is stopped and wiped first. A cluster
# on PORT left over from an earlier run that died (its owner process is gone, and
# its folder carries our marker file) is stopped and its data removed. If PORT is
# still taken (another run in progress, or a foreign server) the next free port
# up to PORT+20 is used, and reported.
#
# Environment: PG_CLUSTER_BIN (default $PGBIN, else /usr/lib/postgresql/15/bin).

PG_CLUSTER_BIN=${PG_CLUSTER_BIN:-${PGBIN:-/usr/lib/postgresql/15/bin}}
_PG_MARKER=.dbbackup-pg-cluster

_pg_as_pg() {
  runuser -u postgres -- "$@"
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
_pg_port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when PID is alive and its command line mentions TEXT.
_pg_pid_matches() {
  local pid=$1 text=$2 cmdline
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$text"* ]]
}

pg_cluster_stop() {
  local dir=${1:?usage: pg_cluster_stop DIR}
  local data=$dir/data pid i
  [[ -f $data/postmaster.pid ]] || return 0
  pid=$(sed -n 1p "$data/postmaster.pid" 2>/dev/null || true)
  if [[ -x $PG_CLUSTER_BIN/pg_ctl ]] && _pg_pid_matches "$pid" "$data"; then
    _pg_as_pg "$PG_CLUSTER_BIN/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
  # Fast shutdown failed or timed out: immediate shutdown (SIGQUIT), then SIGKILL.
  if _pg_pid_matches "$pid" "$data"; then
    log_warn "postgres (pid $pid) did not stop on request; sending SIGQUIT"
    kill -QUIT "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      _pg_pid_matches "$pid" "$data" || break
      sleep 0.1
    done
  fi
  if _pg_pid_matches "$pid" "$data"; then
    log_warn "postgres (pid $pid) still running; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      _pg_pid_matches "$pid" "$data" || break
      sleep 0.1
    done
  fi
  if _pg_pid_matches "$pid" "$data"; then
    log_warn "could not stop postgres (pid $pid) of $data"
    return 1
  fi
  return 0
}

# Stop clusters on PORT that an earlier run of these scripts left behind: a
# postmaster whose data folder is DIR/data with our marker in DIR, whose owner
# (the script that started it) is no longer alive.
_pg_reclaim_port() {
  local port=$1 procdir args data dir owner i
  for procdir in /proc/[0-9]*; do
    [[ -r $procdir/cmdline ]] || continue
    args=()
    mapfile -d '' -t args <"$procdir/cmdline" 2>/dev/null || continue
    [[ ${#args[@]} -ge 3 && ${args[0]} == */postgres ]] || continue
    data=''
    for ((i = 1; i < ${#args[@]} - 1; i++)); do
      [[ ${args[i]} == -D ]] && data=${args[i + 1]}
    done
    [[ $data == /*/data ]] || continue
    dir=${data%/data}
    [[ -f $dir/$_PG_MARKER ]] || continue
    [[ $(sed -n 4p "$data/postmaster.pid" 2>/dev/null) == "$port" ]] || continue
    owner=$(sed -n 's/^owner_pid=//p' "$dir/$_PG_MARKER" 2>/dev/null || true)
    if [[ -n $owner ]] && kill -0 "$owner" 2>/dev/null; then
      continue # in use by a run that is still going
    fi
    log_warn "stopping a PostgreSQL cluster left over from an earlier run: $dir (port $port)"
    pg_cluster_stop "$dir" || continue
    rm -rf "$data"
    # Remove the whole folder only when it is one of our mktemp folders.
    case $dir in
      "${TMPDIR:-/tmp}"/dbbackup-* | /tmp/dbbackup-*) rm -rf "$dir" ;;
    esac
  done
}

pg_cluster_start() {
  local dir=${1:?usage: pg_cluster_start DIR PORT} port=${2:?usage: pg_cluster_start DIR PORT}
  local data candidate chosen='' i
  [[ $port =~ ^[0-9]+$ ]] || die "pg_cluster_start: bad port '$port'"
  [[ -x $PG_CLUSTER_BIN/initdb ]] ||
    die "PostgreSQL server binaries not found in $PG_CLUSTER_BIN (apt-get install postgresql-15)"
  id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (apt-get install postgresql-15)"
  [[ $(id -u) -eq 0 ]] || die "pg_cluster_start needs root: it runs the server as user postgres (runuser)"

  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  data=$dir/data
  # A unix socket path must fit in 107 bytes: DIR/.s.PGSQL.PORT
  if ((${#dir} + 18 > 107)); then
    die "socket folder path too long for a unix socket: $dir (use a shorter TMPDIR)"
  fi

  # A cluster left in this very folder: stop it and start afresh.
  if [[ -e $data ]]; then
    log_warn "wiping an earlier cluster in $data"
    pg_cluster_stop "$dir" || die "could not stop the earlier cluster in $data"
    rm -rf "$data"
  fi

  printf 'owner_pid=%s\n' "$$" >"$dir/$_PG_MARKER"
  chown postgres:postgres "$dir"
  chmod 0755 "$dir" # clients of any OS user may reach the socket (auth is trust anyway)
  _pg_as_pg test -w "$dir" ||
    die "user postgres cannot write to $dir (is a parent folder closed to other users?)"

  local out
  if ! out=$(_pg_as_pg "$PG_CLUSTER_BIN/initdb" -D "$data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C --no-sync 2>&1); then
    printf '%s\n' "$out" >&2
    die "initdb failed in $data"
  fi
  cat >>"$data/postgresql.conf" <<EOF

# --- throwaway cluster (tools/lib/pg-cluster.sh) ---
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 1GB
EOF
  cat >"$data/pg_hba.conf" <<EOF
# throwaway cluster: trust local and 127.0.0.1 connections only, except roles
# the role pwtest (password checks in the tests)
host    all             pwtest          127.0.0.1/32    scram-sha-256
local   all             all                     trust
host    all             all     127.0.0.1/32    trust
local   replication     all                     trust
host    replication     all     127.0.0.1/32    trust
EOF

  # Take the first free port from PORT on. Another run may grab a port between our
  # check and the server's bind: then the start fails to bind and we go on.
  for ((i = 0; i <= 20; i++)); do
    candidate=$((port + i))
    if _pg_port_busy "$candidate"; then
      _pg_reclaim_port "$candidate"
      sleep 0.2
      _pg_port_busy "$candidate" && continue
    fi
    sed -i "s/^port = .*/port = $candidate/" "$data/postgresql.conf"
    : >"$dir/server.log"
    chown postgres:postgres "$dir/server.log"
    if _pg_as_pg "$PG_CLUSTER_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null 2>&1; then
      chosen=$candidate
      break
    fi
    if grep -q -e 'could not bind' -e 'could not create any TCP/IP sockets' "$dir/server.log"; then
      continue
    fi
    tail -n 30 "$dir/server.log" >&2 2>/dev/null || true
    die "PostgreSQL did not start (log: $dir/server.log)"
  done
  [[ -n $chosen ]] || die "could not start PostgreSQL on any port $port..$((port + 20)) of 127.0.0.1 (all in use?)"
  [[ $chosen == "$port" ]] || log_warn "port $port is in use; using $chosen instead"
  port=$chosen
  printf 'port=%s\n' "$port" >>"$dir/$_PG_MARKER"

  for ((i = 0; i < 300; i++)); do
    "$PG_CLUSTER_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && break
    sleep 0.1
  done
  "$PG_CLUSTER_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres ||
    die "PostgreSQL on port $port is not accepting connections (log: $dir/server.log)"

  export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
  export PG_CLUSTER_DIR=$dir PG_CLUSTER_SOCKET=$dir PG_CLUSTER_PORT=$port
  case ":$PATH:" in
    *":$PG_CLUSTER_BIN:"*) ;;
    *) export PATH="$PG_CLUSTER_BIN:$PATH" ;;
  esac
  log_info "PostgreSQL $("$PG_CLUSTER_BIN/postgres" --version | awk '{print $3}') ready on 127.0.0.1:$port, socket $dir"
}
