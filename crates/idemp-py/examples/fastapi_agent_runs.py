"""A FastAPI endpoint that deduplicates agent runs: the same run request (by its
``Idempotency-Key`` header, or derived from the request body) starts one run; a
duplicate that arrives while it runs waits for it and gets the same answer, and later
ones replay it.

    pip install fastapi uvicorn
    IDEMP_STORE=sqlite://runs.db uvicorn fastapi_agent_runs:app --workers 4
"""

import asyncio
import os

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

import idemp

app = FastAPI()
guard = idemp.Guard(
    os.environ.get("IDEMP_STORE", "memory:"),  # sqlite://, redis://, postgres:// for many workers
    scope="agent-runs",
    on_duplicate="wait",
    wait_timeout=120,
    lease=30,  # renewed while the run lasts; a crashed worker's run becomes ambiguous
    on_ambiguous="surface",
)
runs_started = 0


class RunRequest(BaseModel):
    task: str
    customer_id: str


async def run_agent(req: RunRequest) -> dict:
    global runs_started
    runs_started += 1
    await asyncio.sleep(0.2)  # the model and its tools
    return {"answer": f"done: {req.task}", "customer_id": req.customer_id}


@app.post("/agent/run")
async def run(req: RunRequest, idempotency_key: str | None = Header(default=None)) -> dict:
    payload = req.model_dump()
    key = idempotency_key or idemp.keys.for_args("agent-run", "run", payload)
    try:
        result = await guard.arun(key, run_agent, req, fingerprint=idemp.canon.hash_request(payload))
    except idemp.MismatchError:
        raise HTTPException(422, "this Idempotency-Key was used with another request") from None
    except idemp.InProgressError as e:
        raise HTTPException(409, "still running", headers={"Retry-After": str(int(e.retry_after) + 1)}) from None
    except idemp.AmbiguousError:
        raise HTTPException(409, "an earlier attempt crashed mid-run; resolve it first") from None
    return {"key": key, "result": result}
