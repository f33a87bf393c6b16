#!/usr/bin/env python3
"""Generate crates/idemp/tests/vectors/canon.json from the reference implementations.

python-compat expectations come from llm-message-hash-py 0.1.0 (`canonical_json` /
`hash_request` after `json.loads(bytes)`), JCS expectations from the `rfc8785` package
(Trail of Bits). Both are installed into a throwaway venv:

    scripts/gen-canon-vectors.py            # creates /tmp/venv-canon if needed, re-runs inside it

Vector fields:
  name            unique name
  input           the JSON text (UTF-8), or
  input_hex       the input bytes in hex (invalid UTF-8, BOM, raw surrogates), or
  generate        {"seed": N, "bytes": M}: a deterministic document built by the
                  generator below (mirrored in tests/canon_vectors.rs), not committed
  preset          null or anthropic|openai|bedrock|gemini
  drop            extra drop keys (list)
  python          {"canonical": str, "hash": hex} or {"error": "ExceptionType: message"}
                  ("canonical" is omitted for generated inputs)
  jcs             {"canonical": str} or {"error": ...}, or null when not generated
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

VENV = "/tmp/venv-canon"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "idemp", "tests", "vectors", "canon.json")

if os.environ.get("GEN_CANON_IN_VENV") != "1":
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    subprocess.check_call(
        [py, "-m", "pip", "install", "-q", "llm-message-hash-py==0.1.0", "rfc8785==0.1.4"]
    )
    env = dict(os.environ, GEN_CANON_IN_VENV="1")
    sys.exit(subprocess.call([py, os.path.abspath(__file__)], env=env))

import hashlib  # noqa: E402
import random  # noqa: E402

import rfc8785  # noqa: E402
from llm_message_hash import HashOpts, canonical_json, hash_request  # noqa: E402
from llm_message_hash.hash import _canonicalize  # noqa: E402

PRESETS = {
    None: HashOpts,
    "anthropic": HashOpts.for_anthropic,
    "openai": HashOpts.for_openai,
    "bedrock": HashOpts.for_bedrock,
    "gemini": HashOpts.for_gemini,
}


# ---------------------------------------------------------------- deterministic big input
# Mirrored exactly in crates/idemp/tests/canon_vectors.rs (`generate_document`).

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed: int) -> None:
        self.state = seed & MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n


GEN_KEYS = ["id", "name", "role", "content", "usage", "cache_control", "tags", "score",
            "Zeta", "_private", "ключ", "キー", "\u00e9t\u00e9", "\U0001F600", "\uFF61x"]
GEN_WORDS = ["hello", "caf\u00e9", "\u4e2d\u6587", "\U0001F680 go", "line\\nbreak",
             "tab\\tstop", "quote\\\"d", "\\u2028sep", "\u007fdel", "a\\/b",
             "\\ud83d\\ude00", "na\u0303o", "\u05e9\u05dc\u05d5\u05dd", "plain text words"]
GEN_NUMBERS = ["0", "-0", "1", "-17", "4096", "18446744073709551616", "-99999999999999999999999",
               "1.5", "-0.0", "1e-7", "2.5E+20", "1e16", "0.30000000000000004", "123.456e-3",
               "5e-324", "1e400", "7.0"]


def generate_document(seed: int, target: int) -> bytes:
    rng = SplitMix64(seed)
    out: list[str] = []
    size = 0

    def emit(s: str) -> None:
        nonlocal size
        out.append(s)
        size += len(s.encode("utf-8"))

    def value(depth: int) -> None:
        kind = rng.below(8 if depth < 4 else 4)
        if kind == 0:
            emit(GEN_NUMBERS[rng.below(len(GEN_NUMBERS))])
        elif kind == 1:
            emit('"' + GEN_WORDS[rng.below(len(GEN_WORDS))] + '"')
        elif kind == 2:
            emit(["true", "false", "null"][rng.below(3)])
        elif kind == 3:
            emit('"' + " ".join(GEN_WORDS[rng.below(len(GEN_WORDS))] for _ in range(rng.below(6))) + '"')
        elif kind in (4, 5):
            n = rng.below(6)
            emit("{")
            for i in range(n):
                if i:
                    emit(",")
                emit('"' + GEN_KEYS[rng.below(len(GEN_KEYS))] + '":')
                value(depth + 1)
            emit("}")
        else:
            n = rng.below(6)
            emit("[")
            for i in range(n):
                if i:
                    emit(", ")
                value(depth + 1)
            emit("]")

    emit('{"records":[')
    first = True
    while size < target:
        if not first:
            emit(",\n")
        first = False
        emit("{")
        n = 1 + rng.below(6)
        for i in range(n):
            if i:
                emit(",")
            emit('"' + GEN_KEYS[rng.below(len(GEN_KEYS))] + '":')
            value(1)
        emit("}")
    emit("]}")
    return "".join(out).encode("utf-8")


# ---------------------------------------------------------------- reference runs


def err(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {e}"}


def python_expect(data: bytes, preset, drop, with_canonical=True) -> dict:
    opts = PRESETS[preset]()
    opts.drop_keys |= set(drop)
    try:
        obj = json.loads(data)
        canon = canonical_json(obj, opts)
        digest = hash_request(obj, opts)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        return err(e)
    assert digest == hashlib.sha256(canon.encode("utf-8")).hexdigest()
    out = {"hash": digest}
    if with_canonical:
        out["canonical"] = canon
    return out


class DuplicateKey(ValueError):
    pass


def no_dups(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise DuplicateKey("duplicate key")
    return dict(pairs)


def jcs_expect(data: bytes, preset, drop) -> dict | None:
    opts = PRESETS[preset]()
    opts.drop_keys |= set(drop)
    try:
        # JCS numbers are IEEE doubles: parse integers as floats, as JavaScript does.
        obj = json.loads(data, parse_int=float, object_pairs_hook=no_dups)
        obj = _canonicalize(obj, opts)
        return {"canonical": rfc8785.dumps(obj).decode("utf-8")}
    except (ValueError, RecursionError, UnicodeDecodeError, UnicodeEncodeError) as e:
        return err(e)
    except rfc8785.CanonicalizationError as e:
        return err(e)


VECTORS: list[dict] = []
NAMES: set[str] = set()


def add(name: str, text: str | bytes, preset=None, drop=(), jcs=True) -> None:
    assert name not in NAMES, name
    NAMES.add(name)
    v: dict = {"name": name}
    if isinstance(text, bytes):
        data = text
        v["input_hex"] = text.hex()
    else:
        data = text.encode("utf-8")
        v["input"] = text
    v["preset"] = preset
    v["drop"] = list(drop)
    v["python"] = python_expect(data, preset, drop)
    v["jcs"] = jcs_expect(data, preset, drop) if jcs else None
    VECTORS.append(v)


def add_generated(name: str, seed: int, size: int, preset=None) -> None:
    data = generate_document(seed, size)
    assert name not in NAMES
    NAMES.add(name)
    VECTORS.append({
        "name": name,
        "generate": {"seed": seed, "bytes": size},
        "generated_len": len(data),
        "generated_sha256": hashlib.sha256(data).hexdigest(),
        "preset": preset,
        "drop": [],
        "python": python_expect(data, preset, (), with_canonical=False),
        "jcs": None,
    })


# ---------------------------------------------------------------- the vectors

# Scalars and empties.
for i, t in enumerate(["null", "true", "false", "0", "-0", "1", "-1", "42", '""', '"x"', "{}", "[]",
                       "[{}]", "{\"a\":[]}", "[[],[[]],{}]", " \t\n\r{}\r\n\t ", "[ ]", "{ }"]):
    add(f"scalar_or_empty_{i}", t)

# Strings.
strings = {
    "emoji": '"😀🚀👍🏽"',
    "combining": '"e\u0301 n\u0303 a\u030a"',
    "cjk": '"中文 日本語 한국어"',
    "rtl": '"שלום مرحبا"',
    "latin1": '"café naïve Ærø ß"',
    "del_raw": '"a\x7fb"',
    "u2028_raw": '"a\u2028b\u2029c"',
    "bom_inside": '"\ufeffx"',
    "nbsp": '"a\u00a0b"',
    "short_escapes": r'"\" \\ \/ \b \f \n \r \t"',
    "uppercase_hex": r'"\u00E9\u00e9\u20AC"',
    "escaped_ascii": r'"\u0041\u0062c"',
    "escaped_nul": r'"\u0000"',
    "escaped_pair": r'"\ud83d\ude00"',
    "escaped_pair_upper": r'"\uD83D\uDE00"',
    "lone_high": r'"\ud800"',
    "lone_low": r'"\udc00"',
    "reversed_pair": r'"\ude00\ud83d"',
    "high_then_bmp": r'"\ud800\u0041"',
    "high_high_low": r'"\ud800\ud83d\ude00"',
    "high_at_end": r'"x\udbff"',
    "max_bmp": '"\uffff\ufffe"',
    "max_cp": '"\U0010ffff"',
    "escaped_max_cp": r'"\udbff\udfff"',
    "long_ascii": '"' + "abcdefghij" * 300 + '"',
    "mixed_long": '"' + "ab€😀\\n" * 200 + '"',
    "slash": '"a/b</script>"',
    "html": '"<b>&amp;</b>"',
}
for name, t in strings.items():
    add(f"string_{name}", t)
for c in list(range(0x20)):
    add(f"control_escaped_{c:02x}", json.dumps(chr(c)))
for c in [0x7f, 0x80, 0x9f, 0xa0, 0xad, 0x2028, 0x2029, 0xfeff, 0xe000, 0xfff0]:
    add(f"char_raw_{c:04x}", '"' + chr(c) + '"')

# Key order.
add("keys_bmp_vs_astral", '{"\U0001F600":1,"\uFF61":2,"a":3}')
add("keys_astral_vs_e000", '{"\ue000":1,"\U00010000":2}')
add("keys_case", '{"b":1,"B":2,"a":3,"A":4,"_":5,"0":6,"":7}')
add("keys_prefix", '{"abc":1,"ab":2,"a":3,"abd":4}')
add("keys_latin", '{"é":1,"e":2,"f":3,"z":4,"ä":5}')
add("keys_escaped_sort", r'{"\u00e9":1,"e":2,"\ud83d\ude00":3,"\uff61":4}')
add("keys_lone_surrogate", r'{"\ud800":1,"\uffff":2,"\ud7ff":3,"' + "\U00010000" + '":4}')
add("keys_nested", '{"z":{"y":{"x":1,"w":2},"a":[{"c":1,"b":2}]},"a":0}')
add("keys_many", "{" + ",".join(f'"k{(i * 7919) % 257}":{i}' for i in range(257)) + "}")
add("keys_cjk_order", '{"日":1,"本":2,"語":3,"中":4}')
add("keys_control", '{"\\n":1,"\\t":2," ":3,"\\u0000":4}')

# Duplicate keys.
add("dup_simple", '{"a":1,"a":2}')
add("dup_three", '{"a":1,"b":0,"a":2,"a":3}')
add("dup_escaped", r'{"a":1,"\u0061":2}')
add("dup_nested", '{"x":{"k":[1],"k":{"z":1}},"x":{"k":"last"}}')
add("dup_dropped", '{"id":1,"id":2,"x":0}', preset="anthropic")

# Numbers.
numbers = ["0", "-0", "1", "-1", "9007199254740991", "9007199254740992", "9007199254740993",
           "-9007199254740993", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
           "18446744073709551615", "18446744073709551616", "-18446744073709551616",
           "10000000000000000000000000000000000000000", "-10000000000000000000000000000000000000000",
           "123456789012345678901234567890123456789012345678901234567890",
           "0.0", "-0.0", "1.0", "1.5", "-1.5", "1E2", "1e2", "1e+2", "1E-2", "1.0e0", "0e0", "0E-0",
           "-0e-0", "1e-7", "1e-5", "0.0001", "0.00001", "1e16", "1e15", "1e21", "1e22", "1e23", "-1e-7",
           "5e-324", "2.5e-324", "1e-400", "-1e-400", "1.7976931348623157e308", "1.7976931348623158e308",
           "1e308", "1e309", "1e400", "-1e400", "0.30000000000000004", "0.1", "0.2", "0.3",
           "123456789012345680000", "123456789012345678901234567890.0", "1.000000000000000000000001",
           "3.141592653589793238462643383279", "100.0", "100", "1e-6", "1e-07", "0.000001",
           "9.999999999999997e-7", "2.2250738585072014e-308", "4.9406564584124654e-324",
           "12345678.9", "1.23456789e-8", "314159.265358979e-5", "1" + "0" * 30 + ".5",
           "0.1e1", "-2.5E-3", "7e0", "1e1000000000000", "0." + "0" * 400 + "1",
           "NaN", "Infinity", "-Infinity", "[NaN,Infinity,-Infinity,1e400,-1e400]"]
for i, t in enumerate(numbers):
    add(f"number_{i:02d}", t)
add("int_4300_digits", "1" + "0" * 4299)
add("int_4300_digits_negative", "-" + "9" * 4300)
add("int_4301_digits", "1" + "0" * 4300)
add("float_long_digits", "1" + "0" * 5000 + ".0")
add("numbers_in_array", "[" + ",".join(n for n in numbers if n[0] != "[") + "]")

# Randomized (fixed seed): number spellings, strings over all planes, key sets.
rnd = random.Random(8785)


def rand_digits(lo: int, hi: int) -> str:
    return "".join(rnd.choice("0123456789") for _ in range(rnd.randint(lo, hi)))


def rand_number(max_exp: int) -> str:
    sign = rnd.choice(["", "-"])
    whole = rnd.choice(["0", str(rnd.randint(1, 9)) + rand_digits(0, 25)])
    frac = rnd.choice(["", "." + rand_digits(1, 25)])
    exp = rnd.choice(["", "", "e", "E", "e+", "e-", "E-"])
    if exp:
        exp += str(rnd.randint(0, max_exp))
    return sign + whole + frac + exp


def rand_char(escape: bool) -> str:
    plane = rnd.random()
    if plane < 0.3:
        cp = rnd.randint(0x20, 0x7E)
    elif plane < 0.4:
        cp = rnd.randint(0, 0x1F)
    elif plane < 0.7:
        cp = rnd.randint(0x80, 0xFFFF)
    elif plane < 0.8:
        cp = rnd.randint(0xD800, 0xDFFF)
    else:
        cp = rnd.randint(0x10000, 0x10FFFF)
    if cp < 0x20 or cp in (0x22, 0x5C) or 0xD800 <= cp <= 0xDFFF or (escape and cp > 0x7E):
        if cp >= 0x10000:
            v = cp - 0x10000
            return "\\u%04x\\u%04X" % (0xD800 | (v >> 10), 0xDC00 | (v & 0x3FF))
        return ("\\u%04x" if rnd.random() < 0.5 else "\\u%04X") % cp
    return chr(cp)


def rand_string(n: int, surrogates: bool = True) -> str:
    out = []
    while len(out) < n:
        c = rand_char(rnd.random() < 0.3)
        if not surrogates and c.lower().startswith("\\ud") and c[3].lower() in "89abcdef" and len(c) == 6:
            continue
        out.append(c)
    return '"' + "".join(out) + '"'


for k in range(4):
    add(f"random_numbers_{k}", "[" + ",".join(rand_number(250) for _ in range(250)) + "]")
add("random_numbers_wide_exponents", "[" + ",".join(rand_number(400) for _ in range(250)) + "]", jcs=False)
for k in range(4):
    add(f"random_strings_{k}", "[" + ",".join(rand_string(rnd.randint(0, 12), surrogates=(k % 2 == 0)) for _ in range(100)) + "]")
for k in range(4):
    keys = {rand_string(rnd.randint(0, 4), surrogates=(k % 2 == 0)) for _ in range(60)}
    add(f"random_keys_{k}", "{" + ",".join(f"{key}:{i}" for i, key in enumerate(sorted(keys))) + "}")

# Nesting (within the documented depth limit of 256).
add("deep_arrays_100", "[" * 100 + "1" + "]" * 100)
add("deep_objects_100", '{"a":' * 100 + "1" + "}" * 100)
add("deep_arrays_256", "[" * 256 + "]" * 256)
add("deep_mixed_256", '{"a":[' * 128 + "null" + "]}" * 128)

# Whitespace.
add("ws_everywhere", ' { "b" : [ 1 , 2 ] ,\n\t"a" :\r\n"x" } ')
add("ws_inside_numbers_ok", "[1 ,2\t,3\n]")

# Drop keys.
add("drop_custom_any_depth", '{"trace":1,"a":{"trace":2,"b":[{"trace":3,"c":4}]}}', drop=["trace"])
add("drop_custom_escaped_key", r'{"tr\u0061ce":1,"b":2}', drop=["trace"])
add("drop_custom_case_sensitive", '{"Trace":1,"trace":2}', drop=["trace"])
add("drop_custom_unicode", '{"ключ":1,"key":2}', drop=["ключ"])
add("drop_custom_keeps_values", '{"a":"trace","b":["trace"]}', drop=["trace"])
add("drop_everything", '{"a":{"a":1}}', drop=["a"])
add("drop_with_preset", '{"id":1,"x":{"custom":1,"usage":2,"y":3}}', preset="anthropic", drop=["custom"])
add("drop_top_level_scalar", '"id"', preset="anthropic")
add("drop_in_array_of_objects", '[{"id":1},{"id":2,"k":3}]', preset="openai")

# Realistic provider payloads x every preset.
with open(os.path.join(ROOT, "bench", "data", "anthropic_request.json"), encoding="utf-8") as f:
    anthropic_request = f.read()
payloads = {
    "anthropic_request": anthropic_request,
    "anthropic_response": json.dumps({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Réservation confirmée ✅ — vol AF276, siège 32A."},
                    {"type": "tool_use", "id": "toolu_02", "name": "book_flight",
                     "input": {"offer_id": "off_1", "total_price": 1712.4,
                               "passengers": [{"given_name": "Zoë", "family_name": "Müller"}]}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 1800}}, ensure_ascii=False, indent=1),
    "openai_request": json.dumps({
        "model": "gpt-4o", "temperature": 0.7, "seed": 12345678901234567890,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Traduis « bonjour » en 日本語 😀"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}],
        "user": "u-1", "id": "user-supplied-id-field"}, ensure_ascii=False),
    "openai_response": json.dumps({
        "id": "chatcmpl-9abc", "object": "chat.completion", "created": 1731000000,
        "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_7f3",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "こんにちは",
                     "tool_calls": [{"id": "call_1", "type": "function", "function": {
                         "name": "lookup", "arguments": "{\"q\":\"bonjour\"}"}}]},
                     "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}}),
    "bedrock_request": json.dumps({
        "modelId": "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "messages": [{"role": "user", "content": [{"text": "Résume ce document."},
                      {"document": {"format": "txt", "name": "doc", "source": {"bytes": "SGVsbG8="}}},
                      {"cachePoint": {"type": "default"}}]}],
        "system": [{"text": "Be brief."}, {"cache_control": {"type": "ephemeral"}}],
        "inferenceConfig": {"maxTokens": 512, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]},
        "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}}]}}, ensure_ascii=False),
    "bedrock_response": json.dumps({
        "output": {"message": {"role": "assistant", "content": [{"text": "Résumé : bonjour."}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 30, "outputTokens": 8, "totalTokens": 38},
        "metrics": {"latencyMs": 412}}, ensure_ascii=False),
    "gemini_request": json.dumps({
        "contents": [{"role": "user", "parts": [{"text": "Écris un haïku sur la pluie 🌧"}]},
                     {"role": "model", "parts": [{"text": "雨の音"}]},
                     {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}],
        "systemInstruction": {"parts": [{"text": "Poète."}]},
        "generationConfig": {"temperature": 1.0, "topK": 40, "maxOutputTokens": 100, "stopSequences": []},
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}]},
        ensure_ascii=False),
    "gemini_response": json.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Pluie sur le toit\n…"}]},
                        "finishReason": "STOP", "index": 0,
                        "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 20, "totalTokenCount": 32},
        "modelVersion": "gemini-1.5-pro-002"}, ensure_ascii=False),
}
for pname, text in payloads.items():
    for preset in PRESETS:
        add(f"{pname}_{preset or 'nopreset'}", text, preset=preset)

# Deterministic large inputs (about 1 MiB), generated in the test from the seed.
add_generated("generated_1mib_seed1", 1, 1 << 20)
add_generated("generated_1mib_seed2_anthropic", 2, 1 << 20, preset="anthropic")
add_generated("generated_64k_seed3_openai", 3, 1 << 16, preset="openai")

# Invalid inputs: both implementations must reject them.
invalid = ["", " ", "[1,]", '{"a":1,}', '{"a" 1}', '{"a":1 "b":2}', '"abc', '"\x01"', '"\t"',
           '"\n"', r'"\x"', r'"\u12"', r'"\u12G4"', r'"\ud800\u12"', "[1] x", "01", "-01", "1.",
           ".5", "+1", "-", "--1", "0x10", "1e", "1e+", "1.e5", "tru", "nul", "nan", "inf",
           "-NaN", "infinity", "Infinity1", "[", "{", "]", "}", "[1 2]", "{,}", "[,]", ",",
           "1 2", '"a" "b"', "{a:1}", "{'a':1}", "['a']", '{"a":1}}', "[1]]", "\u00a01",
           "\f1", "\v1", "1\u00a0", "/* c */1", "[1,2,]", '{"a"}', '{"a":}', '{1:2}',
           "[\"a\\\"]", "\"\\", "true false", "nulll", "[Infinity", "-Infinit", "-I",
           "[" * 10 + "]" * 9]
for i, t in enumerate(invalid):
    add(f"invalid_{i:02d}", t)
invalid_bytes = {
    "utf8_lone_continuation": b'"\x80"',
    "utf8_overlong_nul": b'"\xc0\x80"',
    "utf8_overlong_slash": b'"\xe0\x80\xaf"',
    "utf8_truncated": b'"\xe2\x82"',
    "utf8_truncated_at_end": b'"\xf0\x9f\x98',
    "utf8_too_high": b'"\xf4\x90\x80\x80"',
    "utf8_f5": b'"\xf5\x80\x80\x80"',
    "utf8_ff": b"\xff",
    "utf8_latin1_e9": b'{"caf\xe9":1}',
    "nul_byte": b"[1]\x00",
}
for name, data in invalid_bytes.items():
    add(f"invalid_{name}", data)

# Not a vector: json.loads(bytes) also auto-detects UTF-16/32 (b'[\x001\x00]\x00' is [1]);
# idemp reads UTF-8 only and rejects it (tested in tests/canon_vectors.rs).

# Byte-level inputs Python accepts: json.loads(bytes) strips a UTF-8 BOM and decodes
# with surrogatepass (raw encoded surrogates survive as lone surrogates).
add("bytes_bom", b'\xef\xbb\xbf{"a":1}')
add("bytes_raw_surrogate", b'"\xed\xa0\x80"')
add("bytes_raw_surrogate_pair_cesu", b'"\xed\xa0\xbd\xed\xb8\x80"')
add("bytes_raw_surrogate_key_order", b'{"\xed\xa0\x80":1,"\xee\x80\x80":2,"\xf0\x90\x80\x80":3}')
add("bytes_raw_high_then_escaped_low", b'"\xed\xa0\xbd\\ude00"')

if len(VECTORS) < 150:
    raise SystemExit(f"only {len(VECTORS)} vectors")

os.makedirs(os.path.dirname(OUT), exist_ok=True)
doc = {
    "about": "Generated by scripts/gen-canon-vectors.py: python = llm-message-hash-py 0.1.0 "
             "canonical_json/hash_request of json.loads(input bytes); jcs = rfc8785 0.1.4 "
             "(integers parsed as doubles, duplicate keys rejected).",
    "python_version": sys.version.split()[0],
    "vectors": VECTORS,
}
with open(OUT, "w", encoding="utf-8") as f:
    json.dump(doc, f, ensure_ascii=True, indent=1)
    f.write("\n")
print(f"wrote {len(VECTORS)} vectors to {os.path.relpath(OUT, ROOT)}")
