#!/usr/bin/env python3
"""Generate crates/idemp/tests/vectors/keys.json: key vectors from the real peers.

Every expected value comes from the published Python packages (agentidemp-py 0.1.0 for
keys, llm-message-hash-py 0.1.0 to confirm the canonical JSON used by `for_args`), or,
for idemp's own formats (the injective builder, batch custom_ids), from the reference
formulas written in their rustdoc, implemented here independently with hashlib.

The script makes a throwaway venv (IDEMP_KEYS_VENV, default /tmp/idemp-keys-venv),
installs the pinned packages, and re-runs itself inside it. The JSON file is committed:
the Rust tests need no Python.

    python3 scripts/gen-key-vectors.py            # writes the file
    python3 scripts/gen-key-vectors.py --check    # fails if the file would change

Input encoding in the file ("data"):
    "text"                             -> the UTF-8 bytes of the string
    {"hex": "ff00"}                    -> raw bytes (e.g. invalid UTF-8)
    {"repeat": "ab", "times": 524288}  -> the UTF-8 of "ab" * 524288 (1 MiB, stored compactly)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import uuid

PINS = ["agentidemp-py==0.1.0", "llm-message-hash-py==0.1.0"]
VENV = os.environ.get("IDEMP_KEYS_VENV", "/tmp/idemp-keys-venv")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "idemp", "tests", "vectors", "keys.json")


def ensure_venv() -> None:
    """Re-exec inside a venv that has the pinned packages."""
    if os.environ.get("IDEMP_KEYS_IN_VENV") == "1":
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *PINS], check=True)
    env = dict(os.environ, IDEMP_KEYS_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


ensure_venv()

import agentidemp  # noqa: E402
import llm_message_hash  # noqa: E402

assert agentidemp.__version__ == "0.1.0", agentidemp.__version__

# ---------------------------------------------------------------- data helpers


def materialize(d) -> bytes:
    if isinstance(d, str):
        return d.encode("utf-8")
    if "hex" in d:
        return bytes.fromhex(d["hex"])
    if "repeat" in d:
        return (d["repeat"] * d["times"]).encode("utf-8")
    raise ValueError(d)


def peer_arg(d):
    """What to pass to the Python package: `str` for text (exercising its str path),
    `bytes` otherwise."""
    if isinstance(d, str):
        return d
    return materialize(d)


def hexdata(b: bytes) -> dict:
    return {"hex": b.hex()}


rng = random.Random(20261122)


def random_text(n: int) -> str:
    pools = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x300, 0x36F),  # combining marks
        (0x4E00, 0x9FFF),  # CJK
        (0x1F300, 0x1FAFF),  # emoji
        (0x0, 0x1F),  # controls incl. NUL
    ]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def random_bytes(n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


MIB = {"repeat": "ab", "times": 524288}
MIB_PLUS = {"repeat": "x", "times": 1048577}

TEXTS = [
    "",
    "abc",
    "a",
    "\0",
    "a\0b",
    "\0\0\0",
    "hello world",
    "The quick brown fox jumps over the lazy dog",
    '{"model":"claude","messages":[{"role":"user","content":"hi"}]}',
    "caf\u00e9",  # precomposed
    "cafe\u0301",  # combining acute: a different key, no normalization
    "\U0001f980",  # crab
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # ZWJ family
    "\U0001f1fa\U0001f1f8",  # flag
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",  # Japanese
    "\u4f60\u597d\uff0c\u4e16\u754c",  # Chinese
    "\ud55c\uad6d\uc5b4",  # Korean
    "\u0645\u0631\u062d\u0628\u0627",  # Arabic
    "\ufeffbom",
    "line\u2028sep",
    "tab\tnew\nline\r\n",
    "\x7f",
    "\U0010ffff",
    "a" * 55,
    "a" * 56,
    "a" * 57,
    "a" * 63,
    "a" * 64,
    "a" * 65,
    "a" * 119,
    "a" * 120,
    "a" * 128,
]

INVALID_UTF8 = [
    b"\xff",
    b"\xc3",  # truncated 2-byte sequence
    b"\xc0\xaf",  # overlong '/'
    b"\xed\xa0\x80",  # encoded surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"abc\x80def",
    b"\xfe\xff\x00\x01",
]

# ---------------------------------------------------------------- sha256_hex


def v_sha256_hex():
    inputs = list(TEXTS)
    inputs += [hexdata(b) for b in INVALID_UTF8]
    inputs += [hexdata(random_bytes(n)) for n in (1, 2, 31, 32, 33, 100, 255, 256, 1000)]
    inputs += [random_text(n) for n in (1, 5, 17, 40, 90)]
    inputs += [MIB, MIB_PLUS]
    out = []
    for d in inputs:
        key = agentidemp.sha256_hex(peer_arg(d))
        # The bytes path must agree with the str path.
        assert key == agentidemp.sha256_hex(materialize(d))
        assert key == "ik_" + hashlib.sha256(materialize(d)).hexdigest()[:32]
        out.append({"input": d, "key": key})
    return out


# ---------------------------------------------------------------- scoped_sha256_hex

SCOPES = ["", "tenant-1", "a\0b", "\U0001f980", "\u65e5\u672c", "cafe\u0301", "user:42/orders"]


def v_scoped_sha256_hex():
    contents = ["", "x", "\0", "abc", hexdata(b"\xff\x00\xfe"), "\U0001f469\u200d\U0001f467", "a" * 64]
    out = []
    for scope in SCOPES:
        for content in rng.sample(contents, 4):
            key = agentidemp.scoped_sha256_hex(scope, peer_arg(content))
            assert key == agentidemp.scoped_key(scope, peer_arg(content))
            out.append({"scope": scope, "content": content, "key": key})
    out.append({"scope": "big", "content": MIB, "key": agentidemp.scoped_sha256_hex("big", materialize(MIB))})
    return out


# ---------------------------------------------------------------- scoped_key


def v_scoped_key():
    cases = [
        ("", []),
        ("s", []),
        ("s", [""]),
        ("s", ["", ""]),
        ("", [""]),
        ("a", ["b", "c"]),
        ("a\0b", ["c"]),  # collides with the previous one: not injective, kept
        ("a", ["b\0c"]),  # and so does this
        ("ab", ["c"]),
        ("a", ["bc"]),
        ("billing", ["user-1", "order-9"]),
        ("billing", ["user-1", hexdata(b"\x00\xff\x80")]),
        ("\U0001f980", ["\U0001f980", "\u65e5\u672c\u8a9e"]),
        ("cafe\u0301", ["caf\u00e9"]),
        ("s", [str(i) for i in range(10)]),
        ("s", [""] * 10),
        ("nul", ["\0", "\0\0"]),
        ("big", [MIB]),
        ("big", ["x", MIB, "y"]),
    ]
    for _ in range(25):
        scope = random_text(rng.randint(0, 8))
        parts = []
        for _ in range(rng.randint(0, 5)):
            if rng.random() < 0.3:
                parts.append(hexdata(random_bytes(rng.randint(0, 20))))
            else:
                parts.append(random_text(rng.randint(0, 12)))
        cases.append((scope, parts))
    out = []
    for scope, parts in cases:
        key = agentidemp.scoped_key(scope, *[peer_arg(p) for p in parts])
        manual = hashlib.sha256(b"\0".join([scope.encode()] + [materialize(p) for p in parts])).hexdigest()[:32]
        assert key == "ik_" + manual
        if not parts:
            assert key == agentidemp.sha256_hex(scope)
        out.append({"scope": scope, "parts": parts, "key": key})
    return out


# ---------------------------------------------------------------- uuid5_key

NAMESPACES = {
    "dns": uuid.NAMESPACE_DNS,
    "url": uuid.NAMESPACE_URL,
    "oid": uuid.NAMESPACE_OID,
    "x500": uuid.NAMESPACE_X500,
    "anthropic": agentidemp.NAMESPACE_ANTHROPIC,
    "1b4e28ba-2fa1-11d2-883f-0016d3cca427": uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
}
assert agentidemp.NAMESPACE_ANTHROPIC == uuid.NAMESPACE_DNS == agentidemp.NAMESPACE_DNS


def raw_uuid5(ns: uuid.UUID, name: bytes) -> str:
    """RFC 4122 v5 over raw bytes (what the `agentidemp` crate and idemp do)."""
    return str(uuid.UUID(bytes=hashlib.sha1(ns.bytes + name).digest()[:16], version=5))


def v_uuid5_key():
    names = ["", "python.org", "https://example.com/a?b=c", "\U0001f980", "cafe\u0301", "\u65e5\u672c\u8a9e", "a\0b", "ik_ba7816bf8f01cfea414140de5dae2223"]
    out = []
    for ns_name, ns in NAMESPACES.items():
        for name in names:
            key = agentidemp.uuid5_key(ns, name)
            assert key == agentidemp.uuid5_key(ns, name.encode())
            assert key == raw_uuid5(ns, name.encode())
            out.append({"namespace": ns_name, "name": name, "key": key})
    # Invalid UTF-8: the Python package raises; idemp hashes the raw bytes (as the
    # `agentidemp` crate does). The expected key is the RFC 4122 value over raw bytes.
    for raw in INVALID_UTF8[:4]:
        try:
            agentidemp.uuid5_key(uuid.NAMESPACE_DNS, raw)
        except UnicodeDecodeError as e:
            python_error = type(e).__name__
        else:
            raise AssertionError("agentidemp-py accepted invalid UTF-8")
        out.append({"namespace": "dns", "name": hexdata(raw), "key": raw_uuid5(uuid.NAMESPACE_DNS, raw), "python_error": python_error})
    return out


# ---------------------------------------------------------------- builder (idemp's own format)


def builder_key(scope: str, parts) -> str:
    h = hashlib.sha256(b"idemp/key/v1\0")
    s = scope.encode()
    h.update(len(s).to_bytes(8, "big") + s)
    for part in parts:
        ((kind, value),) = part.items()
        if kind in ("bytes", "str"):
            tag, b = 1, materialize(value)
        elif kind == "u64":
            tag, b = 2, value.to_bytes(8, "big")
        elif kind == "i64":
            tag, b = 3, value.to_bytes(8, "big", signed=True)
        elif kind == "json":
            canonical = python_canonical(json.loads(value))
            assert canonical == llm_message_hash.canonical_json(json.loads(value))
            tag, b = 4, canonical.encode()
        else:
            raise ValueError(kind)
        h.update(bytes([tag]) + len(b).to_bytes(8, "big") + b)
    return "ik_" + h.digest()[:16].hex()


def v_builder():
    cases = [
        ("", []),
        ("s", []),
        ("s", [{"str": ""}]),
        ("s", [{"str": ""}, {"str": ""}]),
        ("a", [{"str": "b"}, {"str": "c"}]),
        ("a\0b", [{"str": "c"}]),
        ("a", [{"str": "b\0c"}]),
        ("ab", [{"str": "c"}]),
        ("a", [{"str": "bc"}]),
        ("send_email", [{"str": "alice@example.com"}, {"u64": 42}]),
        ("n", [{"u64": 0}]),
        ("n", [{"u64": 18446744073709551615}]),
        ("n", [{"i64": -1}]),
        ("n", [{"i64": -9223372036854775808}]),
        ("n", [{"bytes": {"hex": "0000000000000007"}}]),
        ("n", [{"u64": 7}]),
        ("\U0001f980", [{"str": "\u65e5\u672c"}, {"bytes": {"hex": "ff00"}}]),
        ("big", [{"bytes": MIB}]),
        ("agent-7", [{"str": "send_email"}, {"json": '{"to": "a@x.io", "cc": [], "n": 1.5e-07}'}]),
        ("agent-7", [{"str": "send_email"}, {"json": '{"n": 1.5e-07, "cc": [], "to": "a@x.io"}'}]),
        ("j", [{"json": '"x"'}]),
        ("j", [{"str": '"x"'}]),
        ("j", [{"json": r'{"\u00e9": ["\ud83e\udd80", null, true, -0.0, 18446744073709551615]}'}]),
    ]
    out = []
    for scope, parts in cases:
        out.append({"scope": scope, "parts": parts, "key": builder_key(scope, parts)})
    # The builder never equals the legacy NUL-joined key of the same inputs.
    for case in out:
        if all("str" in p for p in case["parts"]):
            assert case["key"] != agentidemp.scoped_key(case["scope"], *[p["str"] for p in case["parts"]])
    return out


# ---------------------------------------------------------------- for_args


def python_canonical(args) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def reorder(value, r: random.Random):
    """The same JSON value with object keys in another order, at every depth."""
    if isinstance(value, dict):
        items = list(value.items())
        r.shuffle(items)
        return {k: reorder(v, r) for k, v in items}
    if isinstance(value, list):
        return [reorder(v, r) for v in value]
    return value


FOR_ARGS = [
    ("agent-7", "send_email", {"to": "a@example.com", "subject": "hi", "body": "Hello!"}),
    ("agent-7", "send_email", {}),
    ("", "", {}),
    ("agent-7", "noop", None),
    ("agent-7", "noop", []),
    ("agent-7", "echo", "just a string"),
    ("agent-7", "add", [1, 2, 3]),
    ("t", "charge", {"amount": 1999, "currency": "usd", "customer": {"id": "cus_1", "tags": ["vip", "eu"], "meta": {"z": 1, "a": 2, "m": {"y": None, "b": True, "a": False}}}}),
    ("t", "search", {"query": "caf\u00e9 \u65e5\u672c \U0001f980", "limit": 10, "filters": {"lang": ["ja", "fr"]}}),
    ("t", "nums", {"i": -9223372036854775808, "u": 18446744073709551615, "z": 0, "neg": -1}),
    ("t", "floats", {"a": 0.1, "b": 1e-07, "c": 1e16, "d": -0.0, "e": 3.0, "f": 1.5e300, "g": 123456789.125}),
    ("t", "escapes", {"s": "quote\" backslash\\ nl\n tab\t nul\u0000 del\u007f ls\u2028 ps\u2029", "\u00e9": "key with non-ASCII", "": "empty key"}),
    ("t", "keys", {"b": 1, "a": 2, "A": 3, "aa": 4, "\u00e9": 5, "\U0001f980": 6, "\uff21": 7, "_": 8}),
    ("scope\0with nul", "tool", {"x": 1}),
    ("t", "deep", {"l1": {"l2": {"l3": {"l4": [{"k": [1, {"z": [], "a": {}}]}]}}}}),
]


def v_for_args():
    r = random.Random(7)
    out = []
    for scope, tool, args in FOR_ARGS:
        canonical = python_canonical(args)
        key = agentidemp.scoped_key(scope, tool, canonical)
        # The claim in idemp::key::for_args's docs: the package's scoped_key over
        # (tool, json.dumps(sort_keys, compact, ascii)) is the NUL-joined hash ...
        assert key == "ik_" + hashlib.sha256(scope.encode() + b"\0" + tool.encode() + b"\0" + canonical.encode()).hexdigest()[:32]
        # ... and that JSON is exactly llm-message-hash-py's canonical_json (what
        # idemp::canon::write_python_value reproduces).
        assert canonical == llm_message_hash.canonical_json(args), (canonical, llm_message_hash.canonical_json(args))
        variants = []
        for _ in range(3):
            text = json.dumps(reorder(args, r), ensure_ascii=False)
            if text not in variants:
                variants.append(text)
        for text in variants:
            # Argument order never matters.
            assert agentidemp.scoped_key(scope, tool, python_canonical(json.loads(text))) == key
        out.append({"scope": scope, "tool": tool, "args_json": variants, "canonical": canonical, "key": key})
    return out


# ---------------------------------------------------------------- batch custom_ids (idemp's own rule)


def custom_ids(requests, prefix=""):
    seen = {}
    out = []
    for req in requests:
        c = python_canonical(req)
        h = hashlib.sha256(c.encode()).hexdigest()[:32]
        n = seen.get(h, 0)
        seen[h] = n + 1
        out.append(f"{prefix}{h}-{n}")
    return out


def v_custom_ids():
    def msg(text, model="claude-sonnet-4-5", max_tokens=256):
        return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}

    batches = [
        ("", [msg("hi")]),
        ("", [msg("hi"), msg("hi"), msg("bye"), msg("hi")]),
        ("nightly_", [msg("a"), msg("b"), msg("a")]),
        ("p" * 20, [msg("\U0001f980 \u65e5\u672c"), msg("x", max_tokens=1), {}]),
        ("run-7_", [{"b": 1, "a": [1, 2]}, {"a": [1, 2], "b": 1}]),  # equal after canonicalization
    ]
    out = []
    r = random.Random(11)
    for prefix, requests in batches:
        ids = custom_ids(requests, prefix)
        for i in ids:
            assert 1 <= len(i) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in i), i
        assert len(set(ids)) == len(ids)
        out.append({"prefix": prefix, "requests_json": [json.dumps(reorder(q, r), ensure_ascii=False) for q in requests], "ids": ids})
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    doc = {
        "generator": "scripts/gen-key-vectors.py",
        "peers": {"agentidemp-py": agentidemp.__version__, "llm-message-hash-py": llm_message_hash.__version__, "python": sys.version.split()[0]},
        "data_encoding": "string = UTF-8 text; {hex} = raw bytes; {repeat,times} = UTF-8 of repeat*times",
        "sha256_hex": v_sha256_hex(),
        "scoped_sha256_hex": v_scoped_sha256_hex(),
        "scoped_key": v_scoped_key(),
        "uuid5_key": v_uuid5_key(),
        "builder": v_builder(),
        "for_args": v_for_args(),
        "custom_ids": v_custom_ids(),
    }
    counts = {k: len(v) for k, v in doc.items() if isinstance(v, list)}
    text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    if "--check" in sys.argv:
        with open(OUT, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{OUT} is out of date: run scripts/gen-key-vectors.py", file=sys.stderr)
                return 1
        print(f"{OUT} is up to date ({sum(counts.values())} vectors)")
        return 0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT}: {counts}, {sum(counts.values())} vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
