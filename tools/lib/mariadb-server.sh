# shellcheck shell=bash
# A throwaway MariaDB server for the tests (sourced, never run).
# Needs tools/lib/common.sh sourced first (logging, die).
#
#   mariadb_server_start DIR PORT   install a data folder in DIR/data and start mariadbd
#   mariadb_server_stop DIR         stop it
#
# The server runs as the OS user mysql, listens on 127.0.0.1:PORT and on the socket
# DIR/mysqld.sock, writes binary logs (DIR/data/binlog.*, server id 1) and has two
# accounts: root@localhost without a password (unix socket or TCP from localhost)
# and dbbackup_pw@'%' with the password in MARIADB_TEST_PASSWORD, for password checks.
#
# After mariadb_server_start these are exported:
#   MARIADB_SERVER_DIR, MARIADB_SERVER_SOCKET, MARIADB_SERVER_PORT

MARIADB_TEST_PASSWORD=${MARIADB_TEST_PASSWORD:-dbbackup-test-secret}

mariadb_server_stop() {
  local dir=${1:?usage: mariadb_server_stop DIR}
  [[ -S $dir/mysqld.sock ]] || [[ -f $dir/mysqld.pid ]] || return 0
  mariadb-admin --no-defaults --socket="$dir/mysqld.sock" --user=root shutdown >/dev/null 2>&1 || true
  local pid i
  pid=$(cat "$dir/mysqld.pid" 2>/dev/null || true)
  for ((i = 0; i < 100; i++)); do
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log_warn "mariadbd (pid $pid) did not stop on request; killing it"
  kill -9 "$pid" 2>/dev/null || true
}

mariadb_server_start() {
  local dir=${1:?usage: mariadb_server_start DIR PORT} port=${2:?usage: mariadb_server_start DIR PORT}
  local data=$dir/data out i
  mkdir -p "$data"
  chown -R mysql:mysql "$dir"
  chmod 0755 "$dir"
  if ! out=$(mariadb-install-db --no-defaults --datadir="$data" --user=mysql \
    --auth-root-authentication-method=normal --skip-test-db 2>&1); then
    printf '%s\n' "$out" >&2
    die "mariadb-install-db failed in $data"
  fi
  # The first free port from PORT on.
  for ((i = 0; i <= 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((port + i))") 2>/dev/null || break
  done
  port=$((port + i))
  mariadbd --no-defaults --datadir="$data" --user=mysql --socket="$dir/mysqld.sock" \
    --port="$port" --bind-address=127.0.0.1 --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/error.log" --log-bin="$data/binlog" --server-id=1 \
    --skip-name-resolve --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 \
    >/dev/null 2>&1 &
  for ((i = 0; i < 300; i++)); do
    if mariadb-admin --no-defaults --socket="$dir/mysqld.sock" --user=root ping >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  mariadb-admin --no-defaults --socket="$dir/mysqld.sock" --user=root ping >/dev/null 2>&1 || {
    tail -20 "$dir/error.log" >&2 || true
    die "mariadbd did not start (log above)"
  }
  # mariadb-install-db also makes root@<host name>, which --skip-name-resolve
  # leaves half usable (SHOW CREATE USER fails on it): dropped.
  mariadb --no-defaults --socket="$dir/mysqld.sock" --user=root -e "
    DROP USER IF EXISTS 'root'@'$(hostname)';
    CREATE USER 'dbbackup_pw'@'%' IDENTIFIED BY '$MARIADB_TEST_PASSWORD';
    GRANT ALL ON *.* TO 'dbbackup_pw'@'%';" ||
    die "could not create the test accounts"
  export MARIADB_SERVER_DIR=$dir MARIADB_SERVER_SOCKET=$dir/mysqld.sock MARIADB_SERVER_PORT=$port
  log_info "MariaDB $(mariadb --no-defaults --socket="$dir/mysqld.sock" --user=root -N -e 'SELECT VERSION()') on 127.0.0.1:$port and $dir/mysqld.sock"
}
