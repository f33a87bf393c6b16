"""An MCP server whose tools say what they do, for `idemp mcp` to read.

    python examples/mcp/annotated_server.py                 # stdio
    python examples/mcp/annotated_server.py --http 8000     # Streamable HTTP on /mcp

The annotations (MCP tool hints) give each tool its policy in `idemp mcp`:

| tool          | annotations                            | idemp mcp policy              |
|---------------|----------------------------------------|-------------------------------|
| get_balance   | readOnlyHint                           | pass (cache with --cache-reads) |
| set_email     | idempotentHint, destructiveHint=False  | pass                          |
| charge        | (the defaults: destructive, not idempotent) | guard: at most once per key |

Every charge appends one line to the file named by $CHARGES_LOG (default
charges.log): that line is the side effect a retry must not repeat.

Run it behind the proxy from an agent's `mcpServers` entry:

    "payments": {"command": "idemp",
                 "args": ["mcp", "--scope", "run-42", "--", "python", "examples/mcp/annotated_server.py"]}
"""

import argparse
import json
import os
import time

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("payments")
BALANCES: dict[str, int] = {}
EMAILS: dict[str, str] = {}


def _log_path() -> str:
    return os.environ.get("CHARGES_LOG", "charges.log")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def get_balance(customer: str) -> int:
    """The customer's balance in cents (reads only)."""
    return BALANCES.get(customer, 0)


@server.tool(annotations=ToolAnnotations(idempotent_hint=True, destructive_hint=False))
def set_email(customer: str, email: str) -> str:
    """Sets the customer's email: doing it twice is the same as once."""
    EMAILS[customer] = email
    return email


@server.tool()
def charge(customer: str, cents: int, delay_ms: int = 0) -> dict:
    """Charges the customer's card. Not idempotent: every call is a new charge."""
    if cents <= 0:
        raise ValueError("cents must be positive")
    if delay_ms:
        time.sleep(delay_ms / 1000)
    with open(_log_path(), "a", encoding="utf-8") as log:
        log.write(json.dumps({"customer": customer, "cents": cents, "pid": os.getpid()}) + "\n")
        log.flush()
        os.fsync(log.fileno())
    BALANCES[customer] = BALANCES.get(customer, 0) + cents
    return {"receipt": f"rcpt_{customer}_{cents}_{time.time_ns()}", "cents": cents}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT/mcp")
    args = parser.parse_args()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()
