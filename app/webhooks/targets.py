"""Where a webhook may go: an http(s) URL whose every address is public, unless the
deployment allows private networks.

Checked twice: when the job is submitted (a refused target is a 422) and before each
attempt, which then connects to the very address it checked (a name that resolves to a
public address at the check and to a private one at the connection — DNS rebinding —
cannot slip through). Redirects are never followed.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

#: Seconds a webhook's name may take to resolve.
RESOLVE_TIMEOUT = 5.0


class TargetRefused(Exception):
    """The webhook's host does not resolve, or resolves to an address it may not use."""


def _kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes ``address`` off limits (None: a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-global"


async def resolve(url: str, *, allow_private: bool) -> list[str]:
    """The addresses ``url``'s host resolves to, in the resolver's order; refused when
    any of them is off limits."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
    except (OSError, TimeoutError) as error:
        raise TargetRefused(f"{host} does not resolve ({error or 'timed out'})") from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not allow_private:
        for address in addresses:
            kind = _kind(ipaddress.ip_address(address))
            if kind is not None:
                raise TargetRefused(
                    f"{host} resolves to {address}, a {kind} address: webhooks to private "
                    "networks are off (LLM_TASKS_WEBHOOK_ALLOW_PRIVATE_NETWORKS)"
                )
    return addresses


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """``url`` with its host replaced by ``address``, and the Host header and TLS server
    name (``sni_hostname``, which certificates are checked against) of the original."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    port = f":{parts.port}" if parts.port else ""
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{literal}{port}" if userinfo else f"{literal}{port}"
    original_host = f"[{host}]" if ":" in host else host
    headers = {"Host": f"{original_host}{port}"}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), headers, extensions
