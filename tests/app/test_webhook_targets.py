"""Where a webhook may go (the SSRF guard), and the secret's format."""

import asyncio

import pytest
from pydantic import ValidationError

from app.core.config import ApiSettings
from app.webhooks.targets import TargetRefused, pinned, resolve


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),  # IPv4 in IPv6 clothing
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),  # cloud metadata
        ("http://100.64.0.1/hook", "private"),  # carrier-grade NAT, not global
        ("http://0.0.0.0/hook", "private"),
        ("http://224.0.0.1/hook", "multicast"),
    ],
)
def test_private_targets_are_refused_unless_allowed(url: str, kind: str):
    with pytest.raises(TargetRefused, match="private networks are off") as refused:
        asyncio.run(resolve(url, allow_private=False))
    assert kind in str(refused.value)
    assert asyncio.run(resolve(url, allow_private=True))


def test_a_public_address_is_allowed():
    assert asyncio.run(resolve("https://93.184.216.34/hook", allow_private=False)) == [
        "93.184.216.34"
    ]


def test_a_delivery_connects_to_the_address_it_checked():
    url, headers, extensions = pinned("https://user:pw@example.com:8443/h?x=1", "93.184.216.34")
    assert url == "https://user:pw@93.184.216.34:8443/h?x=1"
    assert headers == {"Host": "example.com:8443"}
    assert extensions == {"sni_hostname": "example.com"}  # the certificate is example.com's
    url, headers, extensions = pinned("http://example.com/h", "2606:2800:220:1::1")
    assert url == "http://[2606:2800:220:1::1]/h"
    assert headers == {"Host": "example.com"} and extensions == {}


def test_the_webhook_secret_must_be_a_whsec_key():
    for bad in ("secret", "whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
            ApiSettings(webhook_secret=bad)
    key = ApiSettings(webhook_secret="whsec_" + "QUJD" * 8).webhook_key
    assert key == b"ABC" * 8
