"""The decorator: a charge that runs once per order, however often it is retried,
across threads and processes that share one SQLite file.

    python crates/idemp-py/examples/decorator.py [sqlite://PATH]
"""

import sys
import tempfile
import threading

import idemp

url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite://{tempfile.mkdtemp()}/idemp.db"
charges = []


@idemp.idempotent(store=url, on_duplicate="wait", ttl=24 * 3600)
def charge(order_id: str, cents: int) -> dict:
    charges.append((order_id, cents))  # the side effect: must happen once
    return {"receipt": f"rcpt_{order_id}", "cents": cents}


# An agent retries, a user double-clicks, a queue redelivers: 8 concurrent attempts.
results = []
threads = [threading.Thread(target=lambda: results.append(charge("o-17", 1999))) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()

print(f"attempts: {len(results)}, charges: {len(charges)}, receipt: {results[0]['receipt']}")
assert len(charges) == 1 and all(r == results[0] for r in results)
