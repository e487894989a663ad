"""Which address a request counts against: the peer, or what a trusted proxy says."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from funnelstream.client_address import client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_the_peer_when_it_is_no_trusted_proxy() -> None:
    assert client_address("198.51.100.1", "203.0.113.9", PROXIES) == "198.51.100.1"
    assert client_address("198.51.100.1", "203.0.113.9", ()) == "198.51.100.1"
    assert client_address(None, "203.0.113.9", PROXIES) == "unknown"


def test_the_nearest_untrusted_hop_behind_trusted_proxies() -> None:
    chain = "1.1.1.1, 203.0.113.9, 10.0.0.2"
    assert client_address("10.0.0.1", chain, PROXIES) == "203.0.113.9"
    assert client_address("::1", "2001:db8::5", PROXIES) == "2001:db8::5"


def test_a_malformed_or_missing_header_leaves_the_last_trusted_hop() -> None:
    assert client_address("10.0.0.1", "", PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", "not-an-ip, 10.0.0.3", PROXIES) == "10.0.0.3"
    assert client_address("10.0.0.1", "10.0.0.3, 10.0.0.2", PROXIES) == "10.0.0.3"


addresses = st.ip_addresses(v=4).map(str)
untrusted = addresses.filter(lambda a: not a.startswith("10."))


@given(
    client=untrusted,
    spoofed=st.lists(st.one_of(addresses, st.text(max_size=20)), max_size=5),
    proxies=st.lists(st.integers(1, 254).map(lambda i: f"10.0.0.{i}"), max_size=3),
)
def test_what_a_client_writes_never_chooses_its_address(
    client: str, spoofed: list[str], proxies: list[str]
) -> None:
    """The header as a client sent it, with the real client and each proxy appended by
    the trusted proxies in front: the real client is always what counts."""
    chain = [s.replace(",", "") for s in spoofed] + [client, *proxies[:-1]]
    peer = proxies[-1] if proxies else client
    assert client_address(peer, ", ".join(chain), PROXIES) == client
