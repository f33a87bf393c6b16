# Streamed responses through `idemp serve`: time to the first byte of a guarded SSE
# response (direct vs proxy, p50/p99) and peak proxy RSS with 16 concurrent 64 MiB
# guarded responses. Read by bench/areas/proxy_stream.py.
STREAM_BENCH_REQUESTS=$([ "$QUICK" = 1 ] && echo 300 || echo 2000) \
  run bench_proxy_stream cargo bench -p idemp-cli --bench proxy_stream
