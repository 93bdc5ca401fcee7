"""fortio's `load` flags, parsed as Go's flag package does (sans-IO).

Go flags are single-dash long names (`-qps 100`, `-qps=100`, `--qps 100`); boolean flags take no value unless written
`-flag=false`. Click cannot express that, so the command hands its raw arguments to `parse_args`.
"""

from __future__ import annotations

import dataclasses
import os

from pyztunnel.load.gofmt import parse_go_duration


class FlagError(ValueError):
    """A bad command line; the message is one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    url: str
    qps: float = 8.0  # <= 0: as fast as possible
    connections: int = 4
    duration: float = 5.0  # seconds; 0 = until interrupted
    exactly: int = 0  # -n
    timeout: float = 3.0
    headers: tuple[tuple[str, str], ...] = ()
    keepalive: bool = True
    json_path: str | None = None
    percentiles: tuple[float, ...] = (50.0, 75.0, 90.0, 99.0, 99.9)
    resolution: float = 0.001
    allow_initial_errors: bool = False
    retry: bool = True
    stream: bool = False
    quiet: bool = False
    workers: int = 0  # 0: one per core (at most one per connection)
    labels: str = ""

    @property
    def max_qps(self) -> bool:
        return self.qps <= 0

    @property
    def tcp(self) -> bool:
        return self.url.startswith("tcp://")

    def worker_count(self) -> int:
        wanted = self.workers or (os.cpu_count() or 1)
        return max(1, min(wanted, self.connections))


@dataclasses.dataclass(frozen=True)
class _Flag:
    field: str
    kind: str  # "bool", "int", "float", "duration", "str", "header", "percentiles", "neg-bool"
    help: str


_FLAGS: dict[str, _Flag] = {
    "qps": _Flag("qps", "float", "queries per second in total, 0 = as fast as possible (default 8)"),
    "c": _Flag("connections", "int", "number of connections (default 4)"),
    "t": _Flag("duration", "duration", "how long to run, e.g. 30s, 0 = until interrupted (default 5s)"),
    "n": _Flag("exactly", "int", "run exactly this many calls instead of a duration (no warmup)"),
    "timeout": _Flag("timeout", "duration", "connection and read timeout per request (default 3s)"),
    "H": _Flag("headers", "header", "extra request header 'Name: value' (repeatable)"),
    "keepalive": _Flag("keepalive", "bool", "keep connections alive between requests (default true)"),
    "json": _Flag("json_path", "str", "write the JSON result to this file ('-' = stdout)"),
    "p": _Flag("percentiles", "percentiles", "percentiles to compute (default 50,75,90,99,99.9)"),
    "r": _Flag("resolution", "float", "histogram resolution in seconds (default 0.001)"),
    "allow-initial-errors": _Flag("allow_initial_errors", "bool", "don't abort when a warmup call fails"),
    "no-retry": _Flag("retry", "neg-bool", "don't retry a request whose reused keep-alive socket failed"),
    "stream": _Flag("stream", "bool", "tcp:// only: stream checksummed data on every connection for the whole run"),
    "quiet": _Flag("quiet", "bool", "print only the counter, percentile, Sockets and Code lines"),
    "workers": _Flag("workers", "int", "worker processes (default one per core, at most one per connection)"),
    "labels": _Flag("labels", "str", "labels stored in the JSON result"),
}


def usage() -> str:
    lines = ["usage: pyztunnel load [flags] URL   (URL: http://host:port/path or tcp://host:port)", "flags:"]
    for name, flag in _FLAGS.items():
        value = "" if flag.kind in ("bool", "neg-bool") else " value"
        lines.append(f"  -{name}{value}\n        {flag.help}")
    return "\n".join(lines)


def parse_args(args: list[str]) -> LoadOptions | None:
    """Parse fortio-style arguments. Returns None when help was asked for. Raises FlagError on bad input."""
    values: dict[str, object] = {}
    headers: list[tuple[str, str]] = []
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            return None
        flag = _FLAGS.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name} (see 'pyztunnel load -h')")
        if flag.kind in ("bool", "neg-bool"):
            on = True
            if has_value:
                lowered = value.lower()
                if lowered not in ("1", "t", "true", "0", "f", "false"):
                    raise FlagError(f"invalid boolean value {value!r} for -{name}: write -{name}=true or =false")
                on = lowered in ("1", "t", "true")
            values[flag.field] = (not on) if flag.kind == "neg-bool" else on
            continue
        if not has_value:
            if i >= len(args):
                raise FlagError(f"flag needs an argument: -{name}")
            value = args[i]
            i += 1
        try:
            converted = _convert(flag.kind, value)
        except ValueError as exc:
            raise FlagError(f"invalid value {value!r} for -{name}: {exc}") from None
        if flag.kind == "header":
            assert isinstance(converted, tuple)
            headers.append(converted)
        else:
            values[flag.field] = converted
    if len(positional) != 1:
        what = "missing URL" if not positional else f"expected one URL, got {len(positional)}: {' '.join(positional)}"
        raise FlagError(f"{what} (usage: pyztunnel load [flags] URL)")
    values["headers"] = tuple(headers)
    options = LoadOptions(url=positional[0], **values)  # type: ignore[arg-type]
    _check(options)
    return options


def _convert(kind: str, value: str) -> object:
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "duration":
        return parse_go_duration(value)
    if kind == "header":
        name, sep, header_value = value.partition(":")
        if not sep or not name.strip():
            raise ValueError("write 'Name: value'")
        return (name.strip(), header_value.strip())
    if kind == "percentiles":
        out = []
        for part in value.split(","):
            if not part.strip():
                continue
            p = float(part)
            if not 0 < p < 100:
                raise ValueError(f"percentile {p:g} must be > 0 and < 100")
            out.append(p)
        if not out:
            raise ValueError("list can't be empty")
        return tuple(out)
    return value


def _check(options: LoadOptions) -> None:
    if options.connections < 1:
        raise FlagError(f"-c must be at least 1, not {options.connections}")
    if options.exactly < 0:
        raise FlagError(f"-n must be >= 0, not {options.exactly}")
    if options.timeout <= 0:
        raise FlagError("-timeout must be > 0")
    if options.resolution <= 0:
        raise FlagError("-r must be > 0")
    if options.workers < 0:
        raise FlagError("-workers must be >= 0")
    if options.stream and not options.tcp:
        raise FlagError("-stream needs a tcp://host:port URL")
    if options.tcp:
        _split_hostport(options.url[len("tcp://") :])
    else:
        from pyztunnel.load.http1 import parse_url

        try:
            parse_url(options.url)
        except ValueError as exc:
            raise FlagError(str(exc)) from None


def _split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FlagError(f"bad tcp:// address {text!r}: write tcp://host:port")
    return host.strip("[]"), int(port)


def tcp_address(options: LoadOptions) -> tuple[str, int]:
    return _split_hostport(options.url[len("tcp://") :])
