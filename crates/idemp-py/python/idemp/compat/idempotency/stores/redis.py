"""``RedisStore``: records in Redis (idemp's Redis store: one Lua round trip per
operation), on the server and database of a ``redis.Redis`` client."""

import re
from urllib.parse import quote

from idemp import _core

from .base import NativeStore


def _url(client: object, prefix: str) -> str:
    kw = client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    if "path" in kw:
        raise ValueError("RedisStore: unix-socket clients are not supported; use host and port")
    auth = ""
    if kw.get("password"):
        user = quote(str(kw.get("username") or ""), safe="")
        auth = f"{user}:{quote(str(kw['password']), safe='')}@"
    scheme = "rediss" if kw.get("ssl") or "ssl_cert_reqs" in kw else "redis"
    # idemp prefixes are 1-63 chars of [A-Za-z0-9_.:-]: others are hashed into one.
    name = prefix.rstrip(":") or "idempotency"
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,63}", name):
        name = "idempotency-" + _core.sha256_hex(prefix)[3:19]
    return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}?prefix={name}"


class RedisStore(NativeStore):
    """Records in Redis under ``prefix``, on the server and database ``client`` uses."""

    def __init__(self, client: object, prefix: str = "idempotency:") -> None:
        self.client = client
        self.prefix = prefix
        super().__init__(_core.open_store(_url(client, prefix)))
