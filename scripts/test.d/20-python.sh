#!/usr/bin/env bash
# The Python package (crates/idemp-py): builds it into .venvs/py (maturin, dev profile,
# incremental in target/), runs its own pytest suite, then the original test suites of
# the three seed packages, taken from their sdists on PyPI and run unchanged against
# idemp.compat (a conftest aliases the import names). Exact counts are required:
# agentidemp-py 33, llm-message-hash-py 26, idempotency 45 (its Redis tests use
# database 15 on 127.0.0.1:6379 and flush it; nothing else of ours uses database 15).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
log() { printf '20-python: %s\n' "$*" >&2; }

PY="$(scripts/pyenv.sh py)"
VENV="$(dirname "$(dirname "$PY")")"
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"

log "building idemp (maturin develop)"
maturin develop --quiet -m crates/idemp-py/Cargo.toml >&2

log "idemp's own tests"
"$PY" -m pytest -q -p no:cacheprovider crates/idemp-py/tests

# The seed suites, unchanged, against the drop-ins.
WORK="$ROOT/target/py-seeds"
mkdir -p "$WORK/dl"
run_seed() {
  local spec="$1" module="$2" want="$3"
  local file dir
  file="$(ls "$WORK/dl/" 2>/dev/null | grep -i "^${spec%%==*}-${spec##*==}.tar.gz" | head -1 || true)"
  if [ -z "$file" ]; then
    # pip normalises the name in the file (agentidemp_py-0.1.0.tar.gz).
    "$PY" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps "$spec" -d "$WORK/dl" >&2
  fi
  file="$(ls "$WORK/dl/"*.tar.gz | grep -i "/$(echo "${spec%%==*}" | tr - _)-${spec##*==}.tar.gz$\|/${spec%%==*}-${spec##*==}.tar.gz$" | head -1)"
  dir="$WORK/$module"
  rm -rf "$dir" && mkdir -p "$dir"
  # Only the tests: the original package's sources stay in the archive.
  tar -xzf "$file" -C "$dir" --strip-components=1 --wildcards '*/tests/*'
  cat >"$dir/conftest.py" <<PYEOF
# Runs ${spec}'s own tests against idemp.compat.${module}.
import importlib.util, sys
import idemp.compat
idemp.compat.install("${module}")
assert sys.modules["${module}"].__name__ == "idemp.compat.${module}"
PYEOF
  printf "[pytest]\ntestpaths = tests\nasyncio_default_fixture_loop_scope = function\n" >"$dir/pytest.ini"
  log "$spec: its own suite against idemp.compat.$module"
  (cd "$dir" && "$PY" -m pytest -q -p no:cacheprovider -c pytest.ini --junitxml=report.xml tests) >&2
  "$PY" - "$dir/report.xml" "$spec" "$want" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
passed = tests - failures - errors - skipped
spec, want = sys.argv[2], int(sys.argv[3])
print(f"20-python: {spec}: {passed} passed, {failures} failed, {errors} errors, {skipped} skipped (want {want} passed)", file=sys.stderr)
if passed != want or failures or errors or skipped:
    if skipped:
        print("20-python: skipped tests hide a missing service: start Redis with scripts/services.sh", file=sys.stderr)
    sys.exit(1)
PYEOF
}
run_seed agentidemp-py==0.1.0 agentidemp 33
run_seed llm-message-hash-py==0.1.0 llm_message_hash 26
run_seed idempotency==0.1.0 idempotency 45
log "ok"
