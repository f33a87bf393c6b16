"""Bad input gets a clear, typed error and changes nothing."""

from __future__ import annotations

import datetime

import pytest

import idemp
from idemp import canon, keys


@pytest.mark.parametrize("bad", ["", "has space", "tab\tkey", "caf\u00e9", "x" * 256, "del\x7f"])
def test_invalid_keys_are_refused(bad):
    g = idemp.Guard(idemp.open_store("memory:"), scope="t")
    with pytest.raises(idemp.InvalidKeyError) as e:
        g.run(bad, lambda: 1)
    assert isinstance(e.value, ValueError)
    with pytest.raises(idemp.InvalidKeyError):
        keys.validate_key(bad)


def test_key_functions_refuse_other_types():
    for fn in (keys.sha256_hex, lambda x: keys.scoped_key("s", x), lambda x: keys.scoped_sha256_hex("s", x)):
        with pytest.raises(TypeError):
            fn(123)
        with pytest.raises(TypeError):
            fn(None)
    with pytest.raises(TypeError):
        keys.scoped_sha256_hex(1, b"x")


def test_result_json_cannot_hold_is_a_type_error_and_nothing_is_stored():
    store = idemp.open_store("memory:")
    calls = []

    @idemp.idempotent(store=store, scope="report")
    def report(day: str):
        calls.append(day)
        return {"day": day, "at": datetime.datetime(2026, 1, 1)}

    with pytest.raises(TypeError) as e:
        report("mon")
    assert isinstance(e.value, idemp.NotJSONError)
    msg = str(e.value)
    assert "report" in msg and "['at']" in msg and "datetime" in msg, msg
    # Nothing stored: the key runs again.
    assert store.list(scope="report") == []
    with pytest.raises(TypeError):
        report("mon")
    assert calls == ["mon", "mon"]


def test_nan_result_is_refused():
    g = idemp.Guard(idemp.open_store("memory:"))
    with pytest.raises(idemp.NotJSONError):
        g.run("k1", lambda: {"x": float("nan")})


def test_arguments_json_cannot_hold_name_the_argument():
    @idemp.idempotent(store="memory:")
    def send(to: str, when: datetime.date):
        return "ok"

    with pytest.raises(TypeError) as e:
        send("a", datetime.date(2026, 1, 1))
    assert "['when']" in str(e.value) and "key=" in str(e.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://x", "", "sqlite://", "sqlite://:memory:", "redis://host:notaport/0", "memory:x", "redis://h:1/x"],
)
def test_unknown_or_malformed_store_urls(url):
    with pytest.raises(idemp.StoreUrlError) as e:
        idemp.open_store(url)
    assert isinstance(e.value, ValueError)
    assert "store URL" in str(e.value)


def test_unreachable_store_is_unavailable():
    with pytest.raises(idemp.StoreUnavailableError) as e:
        idemp.open_store("redis://127.0.0.1:1/0")
    assert isinstance(e.value, ConnectionError)


def test_bad_json_text_has_a_position():
    with pytest.raises(idemp.CanonError) as e:
        canon.hash_request(b'{"a": 1,\n "b": }')
    assert e.value.position[:2] == (2, 7)
    assert "Expecting value" in str(e.value)


def test_bad_options():
    with pytest.raises(ValueError):
        canon.hash_request({}, preset="mistral")
    with pytest.raises(ValueError):
        canon.canonical_json({}, format="yaml")
    with pytest.raises(ValueError):
        canon.canonical_json({}, drop_paths=["a..b"])
    with pytest.raises(ValueError):
        idemp.Guard(idemp.open_store("memory:"), on_duplicate="sometimes")
    with pytest.raises(ValueError):
        idemp.Guard(idemp.open_store("memory:"), lease=-1)
    with pytest.raises(TypeError):
        idemp.Guard(42)


def test_circular_values_are_refused():
    a: list = []
    a.append(a)
    with pytest.raises(idemp.NotJSONError) as e:
        canon.hash_request(a)
    assert "circular" in str(e.value) and len(str(e.value)) < 300


def test_mismatched_payload_is_not_replayed():
    g = idemp.Guard(idemp.open_store("memory:"), scope="pay")
    fp1 = canon.hash_request({"amount": 1})
    fp2 = canon.hash_request({"amount": 2})
    assert g.run("order-1", lambda: "paid", fingerprint=fp1) == "paid"
    with pytest.raises(idemp.MismatchError) as e:
        g.run("order-1", lambda: "paid twice", fingerprint=fp2)
    assert e.value.key == "order-1" and e.value.scope == "pay"
