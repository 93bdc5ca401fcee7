"""`python -m pyztunnel.cluster.fetch URL…`: print the HTTP status of each GET (or `error: …`), one per line.

A dependency-free probe to run inside a pod (`cluster exec client -- python -m pyztunnel.cluster.fetch URL`), used by
the demo and the system tests.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def status(url: str, timeout: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
            return str(resp.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"error: {reason}".replace("\n", " ")


def main(argv: list[str]) -> int:
    for url in argv:
        print(status(url), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
