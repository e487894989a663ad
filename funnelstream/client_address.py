"""The client address a request's per-address limits count against.

The socket peer, unless the peer is a proxy the `trusted_proxies` setting names: then the
`X-Forwarded-For` chain is read from the right (each trusted proxy appends the address it
saw), skipping trusted proxies, and the first address no trusted proxy stands for is the
client. Anything a client writes into the header itself sits left of that point and is
never read, so with no trusted proxies (the default) the header is ignored entirely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = "x-forwarded-for"


def _parse(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in proxies)


def client_address(peer: str | None, forwarded_for: str, proxies: Sequence[IPNetwork]) -> str:
    """The address to count: the peer, or the nearest untrusted hop it forwarded for."""
    peer_text = peer or "unknown"
    current = _parse(peer_text)
    if current is None or not proxies or not _trusted(current, proxies):
        return peer_text
    for hop in reversed(forwarded_for.split(",")):
        address = _parse(hop)
        if address is None:
            # A malformed hop was written by someone we do not trust: the last trusted
            # proxy's own view (the address it received from) is all we know.
            break
        current = address
        if not _trusted(address, proxies):
            break
    return str(current)
