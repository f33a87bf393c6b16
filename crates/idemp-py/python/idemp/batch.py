"""Stable ``custom_id``\\ s for Anthropic Message Batches.

A batch resubmitted after a crash or a timeout gets the **same** ids, so results
already received can be matched and nothing has to be remembered between attempts:
``custom_id = prefix + hex32(SHA-256(canonical JSON of the request)) + "-" + n``,
where ``n`` counts the equal requests before it (``idemp::batch``).

>>> from idemp.batch import custom_ids
>>> ids = custom_ids([{"a": 1, "b": 2}, {"b": 2, "a": 1}])
>>> ids[0][:32] == ids[1][:32], ids[0][-2:], ids[1][-2:]
(True, '-0', '-1')
"""

from __future__ import annotations

from ._core import MAX_CUSTOM_ID_LEN, custom_ids, validate_custom_id

__all__ = ["MAX_CUSTOM_ID_LEN", "custom_ids", "validate_custom_id"]
