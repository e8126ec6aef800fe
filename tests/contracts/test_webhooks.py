"""Signatures per Standard Webhooks, checked against the specification's own library."""

import base64
import json
import time
from datetime import UTC, datetime

import pytest
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from contracts.webhooks import OUTPUT_SEQUENCE_FIELD, OUTPUT_SLOT, deliveries_key, output_slot_key
from llm_tasks import verify_webhook
from llm_tasks.signatures import InvalidSignature, secret_key, signed_headers, verify

SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, ok..!").decode()
BODY = b'{"id":"42","status":"succeeded"}'


def test_our_signature_verifies_with_the_standardwebhooks_library():
    headers = signed_headers(secret_key(SECRET), "job:completed", int(time.time()), BODY)
    assert Webhook(SECRET).verify(BODY, headers) == {"id": "42", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace(b"42", b"43"), headers)
    other = "whsec_" + base64.b64encode(b"another key of thirty-two bytes!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_we_verify_what_the_library_signs_and_refuse_the_rest():
    now = datetime.now(UTC)
    stamp = str(int(now.timestamp()))
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": stamp,
        # Several signatures (a secret being rotated): any one that matches will do.
        "webhook-signature": "v1,bm90IHRoaXMgb25l "
        + Webhook(SECRET).sign("msg_1", now, BODY.decode()),
    }
    verify(secret_key(SECRET), BODY, headers)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify(secret_key(SECRET), BODY + b" ", headers)
    old = signed_headers(secret_key(SECRET), "m", int(time.time()) - 600, BODY)
    with pytest.raises(InvalidSignature, match="too old"):
        verify(secret_key(SECRET), BODY, old)
    with pytest.raises(InvalidSignature, match="missing"):
        verify(secret_key(SECRET), BODY, {"webhook-id": "m"})


def test_the_client_helper_returns_the_job_it_verified():
    job = {
        "id": "42",
        "kind": "sentiment",
        "status": "succeeded",
        "priority": 5,
        "created_at": "2026-11-30T10:00:00Z",
        "steps": [{"name": "sentiment", "status": "succeeded"}],
        "attempts": 1,
        "urls": {"self": "http://x/v1/jobs/42", "events": "http://x/v1/jobs/42/events"},
    }
    body = json.dumps(job).encode()
    headers = signed_headers(secret_key(SECRET), "42:completed", int(time.time()), body)
    verified = verify_webhook(body, {k.title(): v for k, v in headers.items()}, SECRET)
    assert verified.id == "42" and verified.status == "succeeded"
    with pytest.raises(InvalidSignature):
        verify_webhook(body, headers, "whsec_" + base64.b64encode(b"x" * 32).decode())


def test_output_deliveries_are_one_per_slot_and_the_last_comes_after_the_waiting_one(
    redis_url: str,
):
    client = redis.Redis.from_url(redis_url)
    slot, deliveries = output_slot_key("job-1"), deliveries_key("job-1")

    def claim(last: bool = False) -> list[int] | None:
        flag = "1" if last else "0"
        return client.eval(OUTPUT_SLOT, 2, slot, deliveries, 500, flag, OUTPUT_SEQUENCE_FIELD, 60)

    assert claim(last=True) is None, "a job without output deliveries gets none at its end"
    assert claim() == [1, 500]  # goes out in 500 ms, with the text as it is then
    assert claim() is None  # an output within that slot is covered by it
    sequence, delay = claim(last=True)
    assert sequence == 2 and 500 < delay <= 1000  # one interval after the waiting one
    client.close()
