# idemp mcp: added latency over stdio of a passed-through call, a replayed call and a
# first guarded call, against the direct connection (crates/idemp-cli/benches/mcp.rs).
MCP_BENCH_CALLS=$([ "$QUICK" = 1 ] && echo 2000 || echo 10000) \
  run bench_mcp cargo bench -p idemp-cli --bench mcp
