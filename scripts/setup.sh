#!/usr/bin/env bash
# trace-quit's one set-up script, used by the README, CI (.ci/run -> scripts/test) and the
# Vagrant VM. Idempotent: every step checks first and skips quickly when already done, so a
# second run takes seconds. One line of output per step; the commands' own output goes to
# $TQ_SETUP_LOG (default /tmp/trace-quit-setup-<checkout>.log) and its tail is shown if one fails.
#
# Two paths, chosen from /etc/os-release (override with TQ_DB=mariadb|mysql):
#   Debian 12     MariaDB 10.11 server + libmariadb (exercised on every CI run)
#   Ubuntu LTS    Oracle MySQL 8 (mysql-server, libmysqlclient-dev): the Vagrant VM
#
# Steps: apt packages; the kernel-headers fallback for bcc; tracefs; (MySQL) AppArmor
# allowance for the disposable servers; .venv (system site packages, so bcc imports) with
# the project and its test extras; /usr/local/bin/trace-quit; the test venvs .venvs/py3.8 ..
# .venvs/py3.15 (SQLAlchemy 2.x), one per CPython present -- pyenv's newest X.Y.N, else the
# system's /usr/bin/python3.X (Debian 13 has no pyenv: 3.13 only; sid: 3.14 and 3.15) -- and .venvs/sqla14
# (SQLAlchemy 1.4). tests/tq_support.cpython_matrix() applies the same rule.
#
# Run as root: sudo scripts/setup.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One log per checkout: several checkouts on one machine set up at the same time.
LOG="${TQ_SETUP_LOG:-/tmp/trace-quit-setup-$(printf '%s' "$REPO" | sha256sum | cut -c1-12).log}"
START=$SECONDS

say() { printf 'setup: %-16s %s\n' "$1" "$2"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
# run CMD...: quietly, into the log; on failure show the log's tail and stop.
run() {
    printf '\n$ %s\n' "$*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        printf 'setup: error: this command failed: %s\n' "$*" >&2
        printf 'setup: the last lines of %s:\n' "$LOG" >&2
        tail -n 25 "$LOG" | sed 's/^/    /' >&2
        exit 1
    fi
}

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0): it installs packages, mounts tracefs and links /usr/local/bin/trace-quit"

# Concurrent runs take turns: for the machine-wide steps (apt, headers, tracefs, the PATH
# link) every checkout shares one lock; the venvs then only lock their own checkout.
exec 9>"/tmp/trace-quit-setup.lock"
flock -w 1800 9 || die "another scripts/setup.sh has held /tmp/trace-quit-setup.lock for 30 minutes"
exec 8>"$LOG.lock"
flock -w 1800 8 || die "another scripts/setup.sh of this checkout has held $LOG.lock for 30 minutes"
: >"$LOG"

# --- which system --------------------------------------------------------------------
# shellcheck disable=SC1091
. /etc/os-release
DB="${TQ_DB:-}"
if [ -z "$DB" ]; then
    case " ${ID:-} ${ID_LIKE:-} " in
        *" ubuntu "*) DB=mysql ;;
        *" debian "*) DB=mariadb ;;
        *) die "unsupported system ${PRETTY_NAME:-?}: this script knows Debian 12 and Ubuntu LTS (set TQ_DB=mariadb|mysql to try anyway)" ;;
    esac
fi
case "$DB" in mariadb|mysql) ;; *) die "TQ_DB must be mariadb or mysql, not '$DB'" ;; esac
IS_UBUNTU=0
case " ${ID:-} ${ID_LIKE:-} " in *" ubuntu "*) IS_UBUNTU=1 ;; esac
say "system" "${PRETTY_NAME:-unknown}, kernel $(uname -r), database $DB"

# --- apt packages ----------------------------------------------------------------------
ARCH="$(dpkg --print-architecture)"
PKGS=(bpfcc-tools python3-bpfcc libbpfcc pkg-config build-essential python3-venv python3-dev ruby)
PKGS+=(prometheus)   # the metrics system test scrapes trace-quit with a real Prometheus
PKGS+=(gdb)   # debugging aid only: trace-quit --pid queues the agent through ptrace itself (docs/attach.md)
PKGS+=(bpftrace)  # the peer in the overhead benchmark (tests/bench/overhead.py)
PKGS+=(sudo)      # the acceptance tests type the README's `sudo trace-quit …` as an unprivileged user
# A test venv made from the system's /usr/bin/python3.X (sid: 3.14 and 3.15) builds mysqlclient
# against that version's headers and needs its venv module.
for v in 3.8 3.9 3.10 3.11 3.12 3.13 3.14 3.15; do
    for p in "python$v-dev" "python$v-venv"; do
        if [ -x "/usr/bin/python$v" ] && apt-cache show "$p" >/dev/null 2>&1; then PKGS+=("$p"); fi
    done
done
if [ "$DB" = mariadb ]; then
    PKGS+=(mariadb-server mariadb-client libmariadb-dev default-libmysqlclient-dev)
else
    PKGS+=(mysql-server mysql-client libmysqlclient-dev)
fi
if [ "$IS_UBUNTU" -eq 1 ]; then
    HEADERS_PKG="linux-headers-$(uname -r)"   # resolved after apt-get update if unknown
else
    HEADERS_PKG="linux-headers-$ARCH"         # Debian's meta-package (linux-headers-amd64)
    # HTML tests drive a headless browser (Debian: "chromium", and "chromium-driver" for selenium).
    # (Ubuntu ships it only as a snap, which a provisioning script cannot rely on.)
    PKGS+=(chromium chromium-driver)  # the driver: the page is measured at 800 and 1400 px
fi

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
headers_ok() {
    [ -e "/lib/modules/$(uname -r)/build/Makefile" ] || installed "$HEADERS_PKG" \
        || { [ "$IS_UBUNTU" -eq 1 ] && installed linux-headers-generic; }
}
MISSING=()
for p in "${PKGS[@]}"; do installed "$p" || MISSING+=("$p"); done
headers_ok || MISSING+=("$HEADERS_PKG")
if [ "${#MISSING[@]}" -eq 0 ]; then
    say "apt packages" "all ${#PKGS[@]} installed, and kernel headers"
else
    export DEBIAN_FRONTEND=noninteractive
    APT=(apt-get -y -q -o DPkg::Lock::Timeout=600)
    run "${APT[@]}" update
    if [ "$IS_UBUNTU" -eq 1 ] && [[ " ${MISSING[*]} " == *" $HEADERS_PKG "* ]] \
        && ! apt-cache show "$HEADERS_PKG" >/dev/null 2>&1; then
        MISSING=("${MISSING[@]/$HEADERS_PKG/linux-headers-generic}")
    fi
    run "${APT[@]}" install "${MISSING[@]}"
    say "apt packages" "installed ${MISSING[*]}"
fi
if [ "$IS_UBUNTU" -eq 1 ]; then
    say "chromium" "not installed on Ubuntu (a snap only there): HTML screenshot tests will skip"
fi

# --- kernel headers for bcc --------------------------------------------------------------
# bcc compiles its C at run time against /lib/modules/$(uname -r)/build. Kernels without
# headers of their own (no package, no CONFIG_IKHEADERS) get the distribution's nearest
# headers linked there: trace-quit's programs are uprobe-only and use nothing but
# struct pt_regs, which is stable, so headers of another kernel version are fine.
KREL="$(uname -r)"
MOD="/lib/modules/$KREL"
FALLBACK_NOTE="mismatched headers are OK for trace-quit's uprobe-only programs (they only use struct pt_regs)"
if [ -e "$MOD/build/Makefile" ]; then
    target="$(readlink -f "$MOD/build")"
    if [ -L "$MOD/build" ] && [[ "$target" != *"$KREL"* ]]; then
        say "kernel headers" "fallback in effect: $MOD/build -> $target; $FALLBACK_NOTE"
    else
        say "kernel headers" "present for $KREL"
    fi
else
    build=""
    for d in $(ls -d /usr/src/linux-headers-* 2>/dev/null | sort -V -r); do
        if [ -e "$d/Makefile" ] && [ -d "$d/include/generated" ]; then build="$d"; break; fi
    done
    [ -n "$build" ] || die "no kernel headers under /usr/src for bcc (install $HEADERS_PKG)"
    source_dir=""
    for d in "${build%-*}-common" "${build%-*}"; do
        if [ -d "$d" ] && [ "$d" != "$build" ]; then source_dir="$d"; break; fi
    done
    mkdir -p "$MOD"
    ln -sfn "$build" "$MOD/build"
    if [ -n "$source_dir" ]; then ln -sfn "$source_dir" "$MOD/source"; fi
    say "kernel headers" "FALLBACK APPLIED: no headers for $KREL, linked $MOD/build -> $build${source_dir:+ and source -> $source_dir}; $FALLBACK_NOTE"
fi

# --- tracefs -----------------------------------------------------------------------------
if [ -e /sys/kernel/tracing/uprobe_events ] || [ -e /sys/kernel/debug/tracing/uprobe_events ]; then
    say "tracefs" "mounted"
else
    mkdir -p /sys/kernel/tracing 2>/dev/null || true
    if mount -t tracefs nodev /sys/kernel/tracing >>"$LOG" 2>&1 && [ -e /sys/kernel/tracing/uprobe_events ]; then
        say "tracefs" "mounted now at /sys/kernel/tracing"
    else
        say "tracefs" "WARNING: could not mount tracefs at /sys/kernel/tracing; eBPF tests will fail (trace-quit doctor says more)"
    fi
fi

# --- AppArmor (Ubuntu's mysqld profile) ----------------------------------------------------
# The disposable servers (workloads/server.py) keep their data, socket and logs in
# /tmp/trace-quit-db-*; allow exactly that to the confined mysqld.
if [ "$DB" = mysql ] && [ -f /etc/apparmor.d/usr.sbin.mysqld ]; then
    LOCAL=/etc/apparmor.d/local/usr.sbin.mysqld
    if grep -qs 'trace-quit-db-' "$LOCAL"; then
        say "apparmor" "mysqld may use /tmp/trace-quit-db-*"
    else
        mkdir -p "$(dirname "$LOCAL")"
        printf '%s\n' '# trace-quit: disposable test servers (workloads/server.py)' \
            '/tmp/trace-quit-db-*/ rw,' '/tmp/trace-quit-db-*/** rwkl,' >>"$LOCAL"
        if command -v apparmor_parser >/dev/null && [ -d /sys/kernel/security/apparmor ]; then
            run apparmor_parser -r /etc/apparmor.d/usr.sbin.mysqld
        fi
        say "apparmor" "allowed mysqld /tmp/trace-quit-db-* ($LOCAL)"
    fi
fi

# --- the project's venv --------------------------------------------------------------------
# Only this checkout from here on, except the PATH link (a single ln -sfn, atomic).
flock -u 9
PYPROJECT_SUM="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
VENV="$REPO/.venv"
venv_ok() {
    [ -x "$VENV/bin/python" ] && grep -qs '^include-system-site-packages = true' "$VENV/pyvenv.cfg" \
        && grep -qs '^home = /usr/bin$' "$VENV/pyvenv.cfg" && "$VENV/bin/python" -c '' 2>/dev/null
}
if venv_ok; then
    venv_state="exists"
else
    rm -rf "$VENV"
    run /usr/bin/python3 -m venv --system-site-packages "$VENV"
    venv_state="created"
fi
"$VENV/bin/python" -c 'import bcc' >>"$LOG" 2>&1 \
    || die ".venv cannot import bcc (python3-bpfcc): see $LOG"
STAMP="$VENV/.trace-quit-setup"
want="pyproject=$PYPROJECT_SUM extras=test"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && [ -x "$VENV/bin/trace-quit" ] \
    && "$VENV/bin/python" -c 'import trace_quit.tracer, trace_quit.workloads.server, pytest' 2>/dev/null; then
    say ".venv" "$venv_state, trace-quit installed (sees bcc)"
else
    run "$VENV/bin/python" -m pip install -q -e "$REPO[test,workloads]"
    echo "$want" >"$STAMP"
    say ".venv" "$venv_state, installed trace-quit[test] in editable mode (sees bcc)"
fi

# --- trace-quit on root's PATH (sudo's secure_path includes /usr/local/bin) -----------------
if [ "$(readlink /usr/local/bin/trace-quit 2>/dev/null)" = "$VENV/bin/trace-quit" ]; then
    say "PATH" "/usr/local/bin/trace-quit -> .venv/bin/trace-quit"
else
    ln -sfn "$VENV/bin/trace-quit" /usr/local/bin/trace-quit
    say "PATH" "linked /usr/local/bin/trace-quit -> $VENV/bin/trace-quit"
fi

# --- test venvs: each CPython 3.8..3.15 present (pyenv's, else the system's), SQLAlchemy 1.4 ---
# mysqlclient + SQLAlchemy, and this project without its dependencies (--no-deps: the
# workloads need neither Jinja2 nor matplotlib), so `python -m trace_quit.workloads` runs.
PYENV_ROOT_DIR="${PYENV_ROOT:-}"
if [ -z "$PYENV_ROOT_DIR" ] && command -v pyenv >/dev/null 2>&1; then PYENV_ROOT_DIR="$(pyenv root)"; fi
if [ -z "$PYENV_ROOT_DIR" ]; then
    for d in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.pyenv}" "$HOME/.pyenv" /root/.pyenv; do
        if [ -n "$d" ] && [ -d "$d/versions" ]; then PYENV_ROOT_DIR="$d"; break; fi
    done
fi
pyenv_python() {  # newest $(pyenv root)/versions/X.Y.N (plain CPython only), or nothing
    local d best=""
    [ -n "$PYENV_ROOT_DIR" ] || return 0
    for d in "$PYENV_ROOT_DIR/versions/$1".*; do
        [[ "$d" =~ /${1//./\.}\.[0-9]+$ ]] && [ -x "$d/bin/python" ] || continue
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n 1)" = "$d" ]; then best="$d"; fi
    done
    if [ -n "$best" ]; then echo "$best/bin/python"; fi
}
VERSIONS='import sys, sqlalchemy, MySQLdb; print("Python %d.%d.%d," % sys.version_info[:3], "SQLAlchemy", sqlalchemy.__version__ + ",", "mysqlclient", ".".join(map(str, MySQLdb.version_info[:3])))'
test_venv() {  # NAME PYTHON SQLALCHEMY-SPEC
    local dir="$REPO/.venvs/$1" py="$2" spec="$3" what="ok"
    local base="python=$(readlink -f "$py") sqlalchemy=$spec"
    # The interpreter and libraries: rebuilt only when the interpreter or the spec changes.
    if [ "$(cat "$dir/.trace-quit-base" 2>/dev/null)" != "$base" ] \
        || ! "$dir/bin/python" -c 'import MySQLdb, pymysql, sqlalchemy' 2>/dev/null; then
        rm -rf "$dir"
        mkdir -p "$REPO/.venvs"
        run "$py" -m venv "$dir"
        run "$dir/bin/python" -m pip install -q mysqlclient PyMySQL "$spec"
        echo "$base" >"$dir/.trace-quit-base"
        what="built"
    fi
    # This project (editable, no dependencies): reinstalled when pyproject.toml changes.
    if [ "$(cat "$dir/.trace-quit-project" 2>/dev/null)" != "$PYPROJECT_SUM" ] \
        || ! "$dir/bin/python" -c 'import trace_quit.workloads.harness' 2>/dev/null; then
        run "$dir/bin/python" -m pip install -q --no-deps -e "$REPO"
        echo "$PYPROJECT_SUM" >"$dir/.trace-quit-project"
        [ "$what" = built ] || what="project reinstalled"
    fi
    say ".venvs/$1" "$what ($("$dir/bin/python" -c "$VERSIONS"))"
}
COVERED=()
for v in 3.8 3.9 3.10 3.11 3.12 3.13 3.14 3.15; do
    py="$(pyenv_python "$v")"
    if [ -z "$py" ] && [ -x "/usr/bin/python$v" ]; then py="/usr/bin/python$v"; fi
    if [ -n "$py" ] && [ -x "$py" ]; then
        test_venv "py$v" "$py" "SQLAlchemy>=2,<3"
        COVERED+=("$v")
    else
        # A venv left from an interpreter that is gone would be tested as if present.
        rm -rf "$REPO/.venvs/py$v"
        if [ -n "$PYENV_ROOT_DIR" ]; then where="none under $PYENV_ROOT_DIR/versions"; else where="no pyenv"; fi
        say ".venvs/py$v" "none: no CPython $v here ($where, no /usr/bin/python$v)"
    fi
done
say "CPython matrix" "${COVERED[*]:-none}"
# The other drivers a SQLAlchemy user picks (docs/drivers.md), each where it supports that
# Python (pip picks the newest release that does; a driver with none is left out and said);
# one venv also gets a small ASGI service stack for the engine-per-request test.
DRIVERS=(mysql-connector-python aiomysql asyncmy)
# The ASGI venv: 3.12 where present (pyenv), else the nearest present (Debian 13: 3.13 alone);
# tests/system/test_fastapi_async_engine.py reads its version from .venvs/asgi-version.
ASGI=""
for v in 3.12 3.13 3.11 3.10 3.9 3.14 3.15 3.8; do
    if [[ " ${COVERED[*]:-} " == *" $v "* ]]; then ASGI="$v"; break; fi
done
mkdir -p "$REPO/.venvs"
printf '%s\n' "$ASGI" >"$REPO/.venvs/asgi-version"
for v in "${COVERED[@]}"; do
    dir="$REPO/.venvs/py$v"
    want="${DRIVERS[*]}"; [ "$v" = "$ASGI" ] && want="$want greenlet fastapi uvicorn"
    if [ "$(cat "$dir/.trace-quit-drivers" 2>/dev/null)" = "$want" ]; then continue; fi
    missing=()
    for pkg in $want; do
        "$dir/bin/python" -m pip install -q "$pkg" >>"$LOG" 2>&1 || missing+=("$pkg")
    done
    echo "$want" >"$dir/.trace-quit-drivers"
    say ".venvs/py$v" "drivers: $want${missing[*]:+ (none for this Python: ${missing[*]})}"
done
py="$(pyenv_python 3.11)"
if [ -z "$py" ] || [ ! -x "$py" ]; then py=/usr/bin/python3; fi   # e.g. the Vagrant VM: no pyenv
test_venv sqla14 "$py" "SQLAlchemy>=1.4,<2"
# The pytest plugin's tests run a pytester suite under SQLAlchemy 1.4: that venv needs pytest.
"$REPO/.venvs/sqla14/bin/python" -c 'import pytest' 2>/dev/null || run "$REPO/.venvs/sqla14/bin/python" -m pip install -q pytest

# --- ownership: a checkout owned by a user (sudo scripts/setup.sh) stays usable by them ------
OWNER="$(stat -c %u "$REPO")"
if [ "$OWNER" != 0 ]; then
    chown -R "$OWNER:$(stat -c %g "$REPO")" "$VENV" "$REPO/.venvs" "$REPO"/*.egg-info 2>/dev/null || true
fi

say "done" "in $((SECONDS - START)) s (log: $LOG)"
