"""In-process checks of the legacy password, its limiter, basic auth and gzip negotiation.

The behaviour through the real processes is in test_exporter_legacy.py,
test_exporter_web_security.py and test_status_api_exporters.py; these pin the pieces down where a
process adds nothing: the comparison, the limiter's key and bucket, and bcrypt timing.
"""

from __future__ import annotations

import hmac
import statistics
import threading
import time
from base64 import b64encode
from pathlib import Path

import bcrypt
import pytest

from servicekit.basicauth import BasicAuth, dummy_hash
from servicekit.encoding import accepts_gzip
from servicekit.limiter import FailureThrottle, address_key, client_key
from servicekit.password import PasswordSource
from tests.support.encoding import GZIP_NEGOTIATION

pytestmark = pytest.mark.unit

# ---- the limiter's key -------------------------------------------------------------------


def test_ipv6_clients_are_limited_per_64_and_ipv4_per_address():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("10.0.0.1") == "10.0.0.1"
    assert address_key("10.0.0.1") != address_key("10.0.0.2")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"  # a dual-stack socket's IPv4 client
    assert address_key("not an address") == "not an address"


def test_authenticated_clients_have_their_own_bucket():
    address = {"REMOTE_ADDR": "10.0.0.1"}
    assert client_key(address) == "10.0.0.1"
    status_api = client_key({**address, "REMOTE_USER": "status-api"})
    prometheus = client_key({**address, "REMOTE_USER": "prom"})
    assert len({status_api, prometheus, client_key(address)}) == 3
    verified = {**address, "SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": "-----BEGIN A"}
    other = {**verified, "SSL_CLIENT_CERT": "-----BEGIN B"}
    assert client_key(verified) != client_key(other)
    assert client_key(verified) not in {client_key(address), status_api}
    # No verified certificate (plain TLS): the address decides.
    assert client_key({**address, "SSL_CLIENT_VERIFY": "NONE"}) == "10.0.0.1"


# ---- the limiter's bucket ----------------------------------------------------------------


def test_tokens_are_taken_atomically():
    throttle = FailureThrottle(burst=5, refill_per_second=0.001)
    start = threading.Barrier(30)
    waits: list[float] = []

    def guess() -> None:
        start.wait()
        waits.append(throttle.take("10.0.0.1"))

    threads = [threading.Thread(target=guess) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert waits.count(0.0) == 5
    assert all(wait > 0 for wait in waits if wait != 0.0)
    assert throttle.take("10.0.0.2") == 0.0  # other clients are untouched


def test_a_token_given_back_is_not_counted():
    throttle = FailureThrottle(burst=2, refill_per_second=0.001)
    for _ in range(10):  # right passwords: each token comes back
        assert throttle.take("a") == 0.0
        throttle.give_back("a")
    assert throttle.take("a") == 0.0
    assert throttle.take("a") == 0.0
    assert throttle.take("a") > 0  # two kept: the third waits
    throttle.give_back("a")
    throttle.give_back("a")
    throttle.give_back("a")  # more than taken: still no more than the burst
    assert [throttle.take("a") == 0.0 for _ in range(3)] == [True, True, False]


# ---- password comparison -----------------------------------------------------------------


def test_passwords_are_compared_as_fixed_size_digests_without_early_exit(
    tmp_path: Path, monkeypatch
):
    password_file = tmp_path / "passwords"
    password_file.write_text("short\n" + "a-much-longer-password-" * 20 + "\n")
    source = PasswordSource(password_file=password_file)
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    for candidate in ["short", "s", "x" * 4000, "a-much-longer-password-", "\ud800"]:
        compared.clear()
        source.matches(candidate)
        # One comparison per accepted password even after a match, all of the same size: the
        # time does not depend on the accepted passwords' lengths or on which one matched.
        assert len(compared) == 2, candidate
        assert {size for pair in compared for size in pair} == {32}, (candidate, compared)
    assert source.matches("short")
    assert source.matches("a-much-longer-password-" * 20)
    assert not source.matches("shor")
    assert not source.matches("short ")
    assert not source.matches("\ud800")


# ---- basic auth --------------------------------------------------------------------------


def _header(user: str, password: str) -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode()


def _median_seconds(check, header: str, tries: int = 7) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        assert check(header) is None
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_unknown_users_cost_as_much_as_known_ones():
    costly = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=10))
    auth = BasicAuth(lambda environ, start: [], {"prom": costly})
    known = _median_seconds(auth.user, _header("prom", "wrong"))
    unknown = _median_seconds(auth.user, _header("nobody", "wrong"))
    assert 0.5 <= unknown / known <= 2.0, (known, unknown)
    assert auth.user(_header("prom", "right")) == "prom"


@pytest.mark.parametrize(("rounds", "expected"), [((4,), 4), ((5, 7), 7), ((), 4)])
def test_the_dummy_hash_takes_the_highest_configured_cost(rounds, expected):
    users = {
        f"u{n}": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=cost)) for n, cost in enumerate(rounds)
    }
    assert dummy_hash(users).startswith(b"$2b$%02d$" % expected)


# ---- gzip negotiation --------------------------------------------------------------------


@pytest.mark.parametrize(("header", "gzipped"), GZIP_NEGOTIATION)
def test_gzip_negotiation(header, gzipped):
    assert accepts_gzip(header) is gzipped
