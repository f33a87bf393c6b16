# The Python package against the packages it replaces (crates/idemp-py/bench/python_bench.py):
# sha256_hex 64 B vs agentidemp-py, hash_request of a 3.7 KiB dict vs llm-message-hash-py,
# settled @idempotent calls/s on SQLite at 1 and 16 threads vs the idempotency FileStore
# and idempotent-tools. Installs idemp with `pip install ./crates/idemp-py` (a release
# build through maturin, incremental in target/) into the peers' venv.
run py_idemp_install "$PY" -m pip install -q --disable-pip-version-check ./crates/idemp-py idempotent-tools==0.1.1
run py_idemp "$PY" crates/idemp-py/bench/python_bench.py --seconds "$PY_SECS" --threads 1,16
