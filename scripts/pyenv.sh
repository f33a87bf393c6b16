#!/usr/bin/env bash
# Throwaway Python virtual environments for the Python-side tests.
#
#   scripts/pyenv.sh NAME     create or update .venvs/NAME from scripts/pyenv/NAME.txt
#   scripts/pyenv.sh --all    every scripts/pyenv/*.txt
#
# Each environment lives in .venvs/NAME (gitignored) and is rebuilt only when its
# requirements file changes (a hash stamp). Prints the environment's python on stdout.
# Needs python3 with venv and access to PyPI; on a bare Debian machine it installs
# python3-venv with apt-get. Tests that need an environment look for
# .venvs/NAME/bin/python and, when it is missing, fail saying to run this script.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
log() { printf 'pyenv: %s\n' "$*" >&2; }

ensure_venv_module() {
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    local sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
    log "installing python3-venv"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
  fi
}

one() {
  local name="$1"
  local req="$ROOT/scripts/pyenv/$name.txt"
  [ -f "$req" ] || { log "no requirements file $req"; exit 2; }
  local dir="$ROOT/.venvs/$name"
  local want; want="$(sha256sum "$req" | cut -c1-16)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$want" ]; then
    echo "$dir/bin/python"
    return
  fi
  ensure_venv_module
  log "creating $dir from scripts/pyenv/$name.txt"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$dir/.stamp"
  echo "$dir/bin/python"
}

if [ "${1:-}" = "--all" ]; then
  for f in "$ROOT"/scripts/pyenv/*.txt; do
    [ -e "$f" ] || continue
    one "$(basename "$f" .txt)" >/dev/null
  done
elif [ $# -eq 1 ]; then
  one "$1"
else
  sed -n 2,11p "$0" >&2
  exit 2
fi
