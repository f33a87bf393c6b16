# `idemp serve` against nginx pass-through (bench/proxy_nginx.py): wrk, 16 connections,
# every store, unique keys and replays, in this run. Needs a release build of the CLI.
run build_cli_release cargo build --release -p idemp-cli
NGINX_SECS=$([ "$QUICK" = 1 ] && echo 3 || echo 10)
run proxy_nginx python3 "$ROOT/bench/proxy_nginx.py" --idemp "$CARGO_TARGET_DIR/release/idemp" --seconds "$NGINX_SECS" --connections 16
