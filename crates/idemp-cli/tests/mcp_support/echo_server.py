"""A scripted fake MCP server (Python standard library only) for the binary's
pass-through tests: it writes a line that is not JSON first, then answers every
JSON-RPC request with its own params echoed back, a tools/list with one annotated
tool, and writes every other line back untouched."""

import json
import sys

out = sys.stdout.buffer
out.write(b"a server that writes garbage on stdout\n")
out.flush()
for raw in sys.stdin.buffer:
    try:
        msg = json.loads(raw)
    except ValueError:
        msg = None
    if isinstance(msg, dict) and "method" in msg and isinstance(msg.get("id"), (str, int)):
        if msg["method"] == "tools/list":
            result = {"tools": [{"name": "echo", "inputSchema": {}, "annotations": {"readOnlyHint": True}}]}
        else:
            result = {"echo": msg.get("params"), "content": [], "isError": False}
        out.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode() + b"\n")
    else:
        out.write(raw if raw.endswith(b"\n") else raw + b"\n")
    out.flush()
