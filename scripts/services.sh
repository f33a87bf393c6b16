#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis run on 127.0.0.1 (5432, 6379) for the tests.
# Installs them with apt-get on a bare Debian machine, starts them if stopped, and
# waits until both answer. Idempotent: safe to run again.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_ready() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

apt_install() {
  log "installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt_install redis-server
fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1 || ! command -v pg_isready >/dev/null; then
  apt_install postgresql postgresql-client
fi

if ! redis_ready; then
  log "starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
if ! pg_ready; then
  log "starting postgresql"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi

for _ in $(seq 1 60); do
  if pg_ready && redis_ready; then break; fi
  sleep 0.5
done
redis_ready || { log "redis did not come up on 127.0.0.1:6379"; exit 1; }
pg_ready || { log "postgresql did not come up on 127.0.0.1:5432"; exit 1; }

# Trust auth is expected; make sure the `test` database exists.
if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -c 'create database test' >/dev/null 2>&1 \
    || $SUDO -u postgres createdb test 2>/dev/null || true
fi
psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null \
  || { log "cannot connect as postgres to database test on 127.0.0.1:5432 (trust auth expected)"; exit 1; }
log "postgresql and redis are up"
