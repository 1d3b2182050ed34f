# shellcheck shell=bash
# Shared helpers for the scripts in tools/ (sourced, never run).
#
#   source "$REPO_ROOT/tools/lib/common.sh"
#
# Provides:
#   log_section TITLE      a clear section header (with the time since the script began)
#   log_info MSG...        an ordinary line
#   log_warn MSG...        a warning, on stderr
#   die MSG...             an error on stderr, then exit 1
#   ensure_swift           put the Swift toolchain on PATH (/opt/swift/usr/bin if needed)
#   ensure_packages        install the Debian packages the project needs (idempotent)
#   as_root CMD...         run a command as root (directly, or through sudo)
#   run_quiet CMD...       run a command silently; show its output only if it fails
#
# Environment:
#   SWIFT_HOME             toolchain root to try when swift is not on PATH (/opt/swift)
#   NO_COLOR               set to disable colour even on a terminal

# The Debian packages the build, the tests and the demo need.
# shellcheck disable=SC2034  # used by the scripts that source this file
DBBACKUP_APT_PACKAGES=(
  liblmdb-dev libzstd-dev libssl-dev libsqlite3-dev libpq-dev libmariadb-dev pkg-config
  postgresql-15 postgresql-client-15 zstd gzip time
)

_common_t0=${SECONDS}

if [[ -t 1 && -z ${NO_COLOR:-} && ${TERM:-dumb} != dumb ]]; then
  _c_bold=$'\033[1m' _c_blue=$'\033[34m' _c_yellow=$'\033[33m' _c_red=$'\033[31m' _c_off=$'\033[0m'
else
  _c_bold='' _c_blue='' _c_yellow='' _c_red='' _c_off=''
fi

log_section() {
  local elapsed=$((SECONDS - _common_t0))
  printf '\n%s%s==> %s%s  [+%dm%02ds]\n' "$_c_bold" "$_c_blue" "$*" "$_c_off" \
    $((elapsed / 60)) $((elapsed % 60))
}

log_info() {
  printf '    %s\n' "$*"
}

log_warn() {
  printf '%swarning:%s %s\n' "$_c_yellow" "$_c_off" "$*" >&2
}

die() {
  printf '%s%serror:%s %s\n' "$_c_bold" "$_c_red" "$_c_off" "$*" >&2
  exit 1
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root to run: $* (run as root, or install sudo)"
  fi
}

ensure_swift() {
  if ! command -v swift >/dev/null 2>&1; then
    local home=${SWIFT_HOME:-/opt/swift}
    if [[ -x $home/usr/bin/swift ]]; then
      export PATH="$home/usr/bin:$PATH"
    fi
  fi
  command -v swift >/dev/null 2>&1 ||
    die "swift not found on PATH nor in ${SWIFT_HOME:-/opt/swift}/usr/bin; install Swift 6 (see README.md)"
}

# True when a Debian package is installed (state "ii").
_pkg_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

# Run a quiet command; show its output only when it fails.
run_quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    printf '%sfailed (exit %d):%s %s\n' "$_c_red" "$rc" "$_c_off" "$*" >&2
    tail -n 40 "$log" >&2
  fi
  rm -f "$log"
  return "$rc"
}

ensure_packages() {
  local missing=() pkg
  command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: these scripts expect Debian/Ubuntu"
  for pkg in "${DBBACKUP_APT_PACKAGES[@]}"; do
    _pkg_installed "$pkg" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log_info "packages: all ${#DBBACKUP_APT_PACKAGES[@]} present"
  else
    log_info "packages: installing ${missing[*]}"
    local apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
    run_quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update ||
      die "apt-get update failed"
    # Installing a server package must not start a system service (mariadb-server
    # would start one): without a policy-rc.d, one that refuses is put in place
    # for the install and removed afterwards.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
      as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 0755 $policy" && made_policy=1
    fi
    local install_ok=1
    run_quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" \
      install --no-install-recommends "${missing[@]}" || install_ok=0
    [[ $made_policy == 1 ]] && as_root rm -f "$policy"
    [[ $install_ok == 1 ]] || die "apt-get install failed for: ${missing[*]}"
    for pkg in "${missing[@]}"; do
      _pkg_installed "$pkg" || die "package $pkg still not installed after apt-get install"
    done
  fi
  ensure_swift
  log_info "swift: $(command -v swift) ($(swift --version 2>&1 | sed -n 1p))"
}
