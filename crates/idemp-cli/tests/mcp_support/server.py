"""The tool server of the `idemp mcp` tests, on the official Python SDK (`mcp` 2.x).

Every tool call that runs appends one JSON line to $EFFECTS (fsynced) before it
answers: the tests count side effects there, not responses.

    python server.py            # stdio
    python server.py --http N   # Streamable HTTP on 127.0.0.1:N/mcp
"""

import argparse
import json
import os
import time

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("idemp-test")


def effect(tool: str, **fields) -> None:
    with open(os.environ["EFFECTS"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "pid": os.getpid(), **fields}) + "\n")
        f.flush()
        os.fsync(f.fileno())


@server.tool()
def charge(customer: str, cents: int, delay_ms: int = 0) -> str:
    """Charges a card: destructive, not idempotent (no annotations = the defaults)."""
    effect("charge", customer=customer, cents=cents)
    time.sleep(delay_ms / 1000)
    return f"receipt {customer} {cents} {time.time_ns()}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def lookup(customer: str) -> str:
    """Reads only."""
    effect("lookup", customer=customer)
    return f"customer {customer} {time.time_ns()}"


@server.tool(annotations=ToolAnnotations(idempotent_hint=True, destructive_hint=False))
def set_flag(name: str) -> str:
    """Idempotent."""
    effect("set_flag", name=name)
    return f"flag {name}"


@server.tool()
def refund(customer: str, cents: int) -> str:
    """Fails with a tool error (isError) when the amount is too large."""
    effect("refund", customer=customer, cents=cents)
    if cents > 1000:
        raise ValueError("refund too large")
    return f"refunded {cents}"


@server.tool()
def die(customer: str) -> str:
    """The server dies mid-call, after the effect."""
    effect("die", customer=customer)
    os._exit(7)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--http", type=int)
    a = p.parse_args()
    if a.http:
        server.run("streamable-http", host="127.0.0.1", port=a.http)
    else:
        server.run()
