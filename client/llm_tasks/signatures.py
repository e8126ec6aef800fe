"""Webhook signatures, per Standard Webhooks (https://www.standardwebhooks.com):
HMAC-SHA256 over ``<webhook-id>.<webhook-timestamp>.<body>``, keyed by the secret's bytes,
sent as ``webhook-signature: v1,<base64>``; any implementation of the specification
verifies them. The service signs with these functions and the client verifies with them."""

import base64
import binascii
import hashlib
import hmac
import time


class InvalidSignature(ValueError):
    """A delivery that does not verify: not signed by the secret, or too old or too new."""


def secret_key(secret: str) -> bytes:
    """The key of a ``whsec_…`` secret."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed delivery (the timestamp is the attempt's, in seconds)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, webhook_id, timestamp, body),
    }


def verify(key: bytes, body: bytes, headers: dict[str, str], *, tolerance: float = 300.0) -> None:
    """Raise :class:`InvalidSignature` unless ``body`` and ``headers`` are a delivery signed
    with ``key`` within ``tolerance`` seconds of now (replays of old ones fail)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp", "")
    if not webhook_id or not stamp.isdigit() or "webhook-signature" not in lowered:
        raise InvalidSignature("not a signed webhook: webhook-id, -timestamp or -signature missing")
    if abs(time.time() - int(stamp)) > tolerance:
        raise InvalidSignature("the webhook's timestamp is too old or too new")
    expected = signature(key, webhook_id, int(stamp), body)
    sent = lowered["webhook-signature"].split()
    if not any(hmac.compare_digest(expected, each) for each in sent):
        raise InvalidSignature("the webhook's signature does not match the secret")
