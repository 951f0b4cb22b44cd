"""Who a request is from behind a trusted reverse proxy (servicekit.proxies)."""

from __future__ import annotations

import argparse

import pytest

from servicekit.cliargs import trusted_proxies
from servicekit.proxies import PEER_KEY, TrustedProxies, parse_networks

pytestmark = pytest.mark.unit

PROXIES = TrustedProxies(parse_networks("10.0.0.0/24, fd00::/64"))


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        # The proxy appends the address it was reached from: that is the client.
        ("10.0.0.5", {"HTTP_X_FORWARDED_FOR": "192.0.2.7"}, "192.0.2.7"),
        # Whatever the client wrote itself stands further left and is never reached.
        ("10.0.0.5", {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 192.0.2.7"}, "192.0.2.7"),
        # Chained trusted proxies are skipped from the right.
        ("10.0.0.5", {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 192.0.2.7, 10.0.0.9"}, "192.0.2.7"),
        ("10.0.0.5", {"HTTP_X_FORWARDED_FOR": "10.0.0.8, 10.0.0.9"}, "10.0.0.8"),
        ("10.0.0.5", {"HTTP_FORWARDED": 'for=6.6.6.6, for="[2001:db8::1]:4711"'}, "2001:db8::1"),
        ("10.0.0.5", {"HTTP_FORWARDED": "for=192.0.2.7:5000;proto=https;by=10.0.0.5"}, "192.0.2.7"),
        ("fd00::3", {"HTTP_X_FORWARDED_FOR": "192.0.2.7"}, "192.0.2.7"),
        ("::ffff:10.0.0.5", {"HTTP_X_FORWARDED_FOR": "192.0.2.7"}, "192.0.2.7"),
        # Spoofed headers from anyone else are ignored.
        ("192.0.2.99", {"HTTP_X_FORWARDED_FOR": "192.0.2.7"}, "192.0.2.99"),
        ("192.0.2.99", {"HTTP_FORWARDED": "for=192.0.2.7"}, "192.0.2.99"),
        # Both headers: one came from the client, unchecked; the request is the proxy's own.
        (
            "10.0.0.5",
            {"HTTP_X_FORWARDED_FOR": "192.0.2.7", "HTTP_FORWARDED": "for=6.6.6.6"},
            "10.0.0.5",
        ),
        ("10.0.0.5", {}, "10.0.0.5"),  # its own health check
        ("10.0.0.5", {"HTTP_X_FORWARDED_FOR": "unknown"}, "10.0.0.5"),
        ("10.0.0.5", {"HTTP_FORWARDED": "for=_hidden"}, "10.0.0.5"),
        ("10.0.0.5", {"HTTP_X_FORWARDED_FOR": "192.0.2.7, unknown, 10.0.0.9"}, "10.0.0.9"),
    ],
)
def test_the_client_a_request_is_for(peer: str, headers: dict[str, str], client: str) -> None:
    assert PROXIES.client(peer, headers) == client


def test_no_trusted_proxy_means_headers_are_never_read() -> None:
    nobody = TrustedProxies()
    assert not nobody
    assert nobody.client("10.0.0.5", {"HTTP_X_FORWARDED_FOR": "192.0.2.7"}) == "10.0.0.5"


def test_a_long_chain_is_read_only_from_its_right_end() -> None:
    chain = ", ".join(["10.0.0.1"] * 1000 + ["192.0.2.7"] + ["10.0.0.2"] * 20)
    # Twenty trusted hops are more than are read: the request counts as the nearest one's.
    assert PROXIES.client("10.0.0.5", {"HTTP_X_FORWARDED_FOR": chain}) == "10.0.0.2"


def test_apply_rewrites_the_remote_address_and_keeps_the_proxy() -> None:
    environ = {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}
    PROXIES.apply(environ)
    assert environ["REMOTE_ADDR"] == "192.0.2.7"
    assert environ[PEER_KEY] == "10.0.0.5"


@pytest.mark.parametrize("text", ["10.0.0.0/33", "proxy.example", "10.0.0.0/8,nope"])
def test_a_bad_list_is_refused_naming_the_entry(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not an IP address or network"):
        trusted_proxies(text)
