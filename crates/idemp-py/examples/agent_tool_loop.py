"""An async agent tool loop: the model calls tools, sometimes the same one twice (a
retry after a timeout, a loop); reads are cached, writes run once per distinct call,
and everything is scoped by the agent run.

    python crates/idemp-py/examples/agent_tool_loop.py
"""

import asyncio

import idemp
from idemp import tools

emails_sent = []
lookups = []


@tools.tool(tools.READ, cache_ttl=300)
async def lookup_order(order_id: str) -> dict:
    lookups.append(order_id)
    await asyncio.sleep(0.05)  # a slow API
    return {"order_id": order_id, "status": "shipped", "email": "ada@example.com"}


@tools.tool(tools.WRITE, store="memory:")
async def send_email(to: str, subject: str, body: str) -> dict:
    emails_sent.append(to)
    await asyncio.sleep(0.05)
    return {"sent": True, "message_id": f"msg-{len(emails_sent)}"}


TOOLS = {"lookup_order": lookup_order, "send_email": send_email}

# What a model asked for, turn by turn: it repeats calls (same arguments, other order).
MODEL_TURNS = [
    [("lookup_order", {"order_id": "o-1"}), ("lookup_order", {"order_id": "o-1"})],
    [("send_email", {"to": "ada@example.com", "subject": "Shipped", "body": "Your order shipped."})],
    # The agent did not see the answer (a timeout) and retries, arguments reordered:
    [("send_email", {"body": "Your order shipped.", "subject": "Shipped", "to": "ada@example.com"})],
]


async def run_agent(run_id: str) -> list:
    transcript = []
    with tools.session(run_id):
        for turn in MODEL_TURNS:
            # Tool calls of one turn run concurrently, as agent frameworks do.
            results = await asyncio.gather(*(TOOLS[name](**args) for name, args in turn))
            transcript.extend(results)
    return transcript


async def main() -> None:
    transcript = await run_agent("run-42")
    print(f"tool calls: {len(transcript)}, lookups executed: {len(lookups)}, emails sent: {len(emails_sent)}")
    assert len(lookups) == 1 and emails_sent == ["ada@example.com"]
    assert transcript[2] == transcript[3]  # the retry got the first send's result
    await run_agent("run-43")  # another run is another conversation: it may send again
    assert len(emails_sent) == 2


if __name__ == "__main__":
    asyncio.run(main())
