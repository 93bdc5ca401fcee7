"""A throwaway nginx on 127.0.0.1 for benchmarks and tests: temp prefix, `/status/NNN` returns NNN, then stopped."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CONFIG = """
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    server {{
        listen {host}:{port} backlog=4096;
{status_locations}
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


STATUSES = (200, 204, 404, 418, 500, 503)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def nginx(workers: int = 1, host: str = "127.0.0.1") -> Iterator[int]:
    """Start nginx on HOST (a loopback address), yield its port, stop it (even if the caller fails)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="pzt-nginx-") as prefix:
        port = free_port(host)
        conf = Path(prefix) / "nginx.conf"
        locations = "\n".join(f"        location = /status/{code} {{ return {code}; }}" for code in STATUSES)
        conf.write_text(CONFIG.format(prefix=prefix, host=host, port=port, workers=workers, status_locations=locations))
        proc = subprocess.Popen(
            [binary, "-p", prefix, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"nginx did not start: {err.strip()}")
                with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen within 10 s")
                time.sleep(0.02)  # polling readiness with a deadline
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
