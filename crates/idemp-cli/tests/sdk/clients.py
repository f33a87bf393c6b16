"""The official SDKs as an agent uses them, pointed at `idemp serve`.

Run by crates/idemp-cli/tests/serve_sdk.rs with the `sdk` venv
(scripts/pyenv.sh sdk): `python clients.py SCENARIO PROXY_URL`. Each scenario prints
one JSON object per logical call on stdout (and `FIRST_EVENT` lines for streams), so
the Rust side can count what the fake upstream executed against what every caller
got. Client timeouts are shorter than the upstream's delay, so the SDKs' own retry
loops fire: the first attempt times out and is resent with the same body.
"""

import json
import sys

SHORT = 0.5  # seconds: the upstream answers after about 1.2 s


def emit(**fields):
    print(json.dumps(fields), flush=True)


def anthropic_retry(base):
    import anthropic

    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-tenant-a", timeout=SHORT, max_retries=6)
    for i in range(2):
        msg = client.messages.create(
            model="claude-test",
            max_tokens=16,
            messages=[{"role": "user", "content": f"slow call {i}"}],
            extra_headers={"x-test-delay-ms": "1200"},
        )
        emit(call=i, text=msg.content[0].text, id=msg.id)


def openai_retry(base):
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-openai-tenant-a", timeout=SHORT, max_retries=6)
    for i in range(2):
        c = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": f"slow call {i}"}],
            extra_headers={"x-test-delay-ms": "1200"},
        )
        emit(call=i, text=c.choices[0].message.content, id=c.id)


def stripe_retry(base):
    import stripe

    client = stripe.StripeClient(
        "sk_test_tenant_a",
        base_addresses={"api": base},
        max_network_retries=6,
        http_client=stripe.RequestsClient(timeout=SHORT),
    )
    for i in range(2):
        charge = client.v1.charges.create(
            params={"amount": 100 + i, "currency": "usd", "source": "tok_visa"},
            options={"headers": {"x-test-delay-ms": "1200"}},
        )
        emit(call=i, id=charge.id, amount=charge.amount)


def anthropic_stream(base):
    import anthropic

    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-tenant-a", timeout=30, max_retries=0)
    # The same streamed call twice: executed once, then replayed.
    for i in range(2):
        first = True
        with client.messages.stream(
            model="claude-test",
            max_tokens=16,
            messages=[{"role": "user", "content": "stream please"}],
            extra_headers={"x-test-gate": "1"},
        ) as stream:
            for _text in stream.text_stream:
                if first:
                    print("FIRST_EVENT", flush=True)
                    first = False
            emit(call=i, text=stream.get_final_text())


def tenants(base):
    import anthropic

    for key in ["sk-ant-tenant-a", "sk-ant-tenant-b", "sk-ant-tenant-a", "sk-ant-tenant-b"]:
        client = anthropic.Anthropic(base_url=base, api_key=key, timeout=30, max_retries=0)
        msg = client.messages.create(
            model="claude-test",
            max_tokens=16,
            messages=[{"role": "user", "content": "the same question"}],
        )
        emit(tenant=key, text=msg.content[0].text)


if __name__ == "__main__":
    scenario, base = sys.argv[1], sys.argv[2]
    {
        "anthropic-retry": anthropic_retry,
        "openai-retry": openai_retry,
        "stripe-retry": stripe_retry,
        "anthropic-stream": anthropic_stream,
        "tenants": tenants,
    }[scenario](base)
