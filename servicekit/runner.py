"""Running a service: the cheroot server built with limits, TLS and the web configuration, served
until SIGINT or SIGTERM.

cheroot (CherryPy's server) is used rather than waitress because it terminates TLS itself, which
the exporter-toolkit web configuration needs (server certificates, client certificates, minimum
TLS version), and it serves from a fixed thread pool. Flask's development server is never used.
The web configuration is re-read when it changes: basic-auth users and headers apply from the next
request, certificates from the next connection.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Callable

from servicekit.limits import DEFAULT_MAX_REQUESTS_PER_CLIENT, ClientSlots, RequestLimits, Server
from servicekit.middleware import wrap_app
from servicekit.proxies import TrustedProxies
from servicekit.responses import WSGIApp
from servicekit.tls import ReloadingSSLAdapter
from servicekit.webconfig import WebConfig, WebConfigError, WebConfigFile

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUESTS = 40


def _host(listen_address: str) -> str:
    return listen_address.strip("[]") or "0.0.0.0"


def make_server(
    app: WSGIApp,
    *,
    listen_address: str,
    port: int,
    web_config_file: Path | None = None,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT,
    trusted_proxies: TrustedProxies | None = None,
    threads: int = 16,
) -> Server:
    """Build (not start) the server; raises ``WebConfigError`` on a bad web config."""
    config = WebConfigFile(web_config_file) if web_config_file else WebConfig()
    limits = RequestLimits(
        clients=ClientSlots(max_requests_per_client),
        proxies=trusted_proxies or TrustedProxies(),
    )
    server = Server(
        (_host(listen_address), port),
        wrap_app(app, config, max_requests=max_requests),
        limits=limits,
        # Threads for every request the limit lets in (excess ones reach it and get their 503),
        # plus those one client may hold while still sending: scrapes from others find a thread.
        numthreads=max(threads, max_requests + max_requests_per_client + 4),
        request_queue_size=128,
        timeout=10,
        server_name="gpu-cluster-monitor",
    )
    if isinstance(config, WebConfigFile):
        tls = config.current().config.tls
        if tls is not None:
            source = config
            server.ssl_adapter = ReloadingSSLAdapter(tls, lambda: source.current().context)
    return server


def serve(app: WSGIApp, **options: object) -> None:
    """Serve until interrupted (SIGINT/SIGTERM are turned into KeyboardInterrupt by the CLI)."""
    server = make_server(app, **options)  # type: ignore[arg-type]
    server.prepare()
    scheme = "https" if server.ssl_adapter else "http"
    log.info("listening on %s://%s:%s", scheme, *server.bind_addr[:2])
    try:
        server.serve()
    finally:
        server.stop()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_service(
    app: WSGIApp,
    *,
    listen_address: str,
    port: int,
    web_config_file: Path | None,
    max_requests: int,
    max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT,
    trusted_proxies: TrustedProxies | None = None,
    on_stop: Callable[[], None],
) -> int:
    """Serve ``app`` until SIGINT or SIGTERM, then call ``on_stop``; returns the exit status.

    Shared by both command lines: a bad web config exits 2 and a port that cannot be bound exits 1,
    each with one log line and no traceback.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        serve(
            app,
            listen_address=listen_address,
            port=port,
            web_config_file=web_config_file,
            max_requests=max_requests,
            max_requests_per_client=max_requests_per_client,
            trusted_proxies=trusted_proxies,
        )
    except WebConfigError as error:
        log.error("%s", error)
        return 2
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", listen_address, port, error)
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        on_stop()
    return 0
