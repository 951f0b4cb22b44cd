"""nginx from Debian as the reverse proxy in front of a service, forwarding as sites set it up:
``X-Forwarded-For`` with the address each viewer came from."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulator.proc import ManagedProcess, free_port, wait_started

_CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


@contextmanager
def reverse_proxy(upstream_port: int, directory: Path) -> Iterator[str]:
    """Run nginx in front of ``127.0.0.1:upstream_port``; yields its base URL."""
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed (scripts/setup.sh installs it)"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(_CONFIG.format(dir=directory, port=port, upstream=upstream_port))
    process = ManagedProcess(
        [binary, "-c", str(config), "-p", str(directory), "-e", str(directory / "error.log")],
        log_path=directory / "nginx.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_started(process, f"{url}/-/healthy", what="nginx", timeout=15)
        yield url
    finally:
        process.stop()
