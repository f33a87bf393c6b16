"""The agent of the `idemp mcp` tests, on the official Python SDK (`mcp` 2.x).

    python agent.py --url http://127.0.0.1:N/mcp CALLS_JSON
    python agent.py --stdio CALLS_JSON -- COMMAND [ARGS...]

CALLS_JSON is a list of [tool, arguments] or [tool, arguments, key] (the key goes
in params._meta["dev.idemp/key"]). The agent lists the tools first (as agents do),
then makes the calls in order and prints one JSON line per call:
{"is_error": bool, "text": str}. With "parallel" as the first element, the calls
run at once.
"""

import asyncio
import json
import os
import sys

from mcp import Client, StdioServerParameters


async def one(client, call):
    tool, args = call[0], call[1]
    meta = {"dev.idemp/key": call[2]} if len(call) > 2 else None
    r = await client.call_tool(tool, args, meta=meta)
    text = "".join(getattr(c, "text", "") for c in r.content)
    return {"is_error": bool(r.is_error), "text": text}


async def main() -> None:
    argv = sys.argv[1:]
    if argv[0] == "--url":
        target, calls = argv[1], json.loads(argv[2])
    else:
        calls = json.loads(argv[1])
        cmd = argv[argv.index("--") + 1 :]
        target = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
    parallel = bool(calls) and calls[0] == "parallel"
    if parallel:
        calls = calls[1:]
    async with Client(target, read_timeout_seconds=60) as client:
        await client.list_tools()
        if parallel:
            results = await asyncio.gather(*(one(client, c) for c in calls))
        else:
            results = [await one(client, c) for c in calls]
    for r in results:
        print(json.dumps(r), flush=True)


asyncio.run(main())
