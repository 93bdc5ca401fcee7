"""A small synchronous client of the controller API (for the `cluster` commands and scripts)."""

from __future__ import annotations

import http.client
import json
import socket
import typing
from pathlib import Path
from typing import Any

from pyztunnel.cluster.layout import Layout
from pyztunnel.errors import UserError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("controller", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControllerUnavailable(UserError):
    pass


class ApiFailed(UserError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, layout: Layout, name: str, timeout: float = 30.0) -> None:
        self.layout = layout
        self.name = name
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        conn = _UnixConnection(self.layout.socket, timeout or self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControllerUnavailable(
                f"cluster {self.name!r} is not running (no controller at {self.layout.socket}); "
                f"start it with 'pyztunnel cluster up --name {self.name}'"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ControllerUnavailable(f"cluster {self.name!r}: controller API failed: {exc}") from None
        finally:
            conn.close()
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {"error": data.decode(errors="replace")}
        if resp.status >= 400:
            raise ApiFailed(resp.status, f"cluster {self.name!r}: {answer.get('error', resp.reason)}")
        return answer

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.call("GET", "/v1/state")
        return state

    def saved_state(self) -> dict[str, Any] | None:
        """The last state.json the controller wrote (when it is not running any more)."""
        try:
            loaded = json.loads(self.layout.state.read_text())
        except (OSError, ValueError):
            return None
        return typing.cast(dict[str, Any], loaded) if isinstance(loaded, dict) else None


def find_pod(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A pod by name, or the first ready (else first) pod of a deployment of that name (`kubectl exec deploy/x`)."""
    pods: list[dict[str, Any]] = [*state.get("pods", []), *state.get("proxies", [])]
    for pod in pods:
        if pod["name"] == name:
            return pod
    owned = sorted(
        (p for p in pods if p["owner"]["name"] == name and p["phase"] != "Terminating"),
        key=lambda p: (not p["ready"], p["name"]),
    )
    return owned[0] if owned else None
