"""Direct mode: pod proxies on loopback listeners named by flags, instead of pods set up by ZDS (the in-pod source,
`zds_client`). `--direct-outbound LISTEN=TARGET` is an outbound listener with a fixed target; `--direct-inbound IP`
or `IP=APPPORT` an inbound HBONE listener (and a plaintext one with an app port)."""

from __future__ import annotations

from collections.abc import Callable

from pyztunnel.errors import UserError
from pyztunnel.protocols import hbone
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.proxy.netsock import DirectNet
from pyztunnel.proxy.pod import PodProxy, Ports
from pyztunnel.proxy.podset import DATA_PATH
from pyztunnel.proxy.shared import Shared
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.workloads.model import Workload


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    parsed = hbone.parse_authority(text.strip())
    if parsed is None:
        raise UserError(f"{what}: {text!r} is not IP:PORT (IPv6 as [addr]:port)")
    return parsed


def direct_pods(shared: Shared, settings: ProxySettings) -> list[PodProxy]:
    """Direct-mode listeners: `LISTEN=TARGET` outbound, `IP` or `IP=APPPORT` inbound (HBONE; plaintext with a port)."""
    pods: list[PodProxy] = []
    for spec in settings.direct_outbound:
        listen_text, sep, target_text = spec.partition("=")
        if not sep:
            raise UserError(f"--direct-outbound: {spec!r} must be LISTEN_IP:PORT=TARGET_IP:PORT")
        ip, port = parse_hostport(listen_text, "--direct-outbound")
        target = parse_hostport(target_text, "--direct-outbound")
        env = DirectNet(ip, {port: target}, name=f"{ip}:{port}")
        pods.append(
            PodProxy(
                shared,
                f"direct-out-{ip}-{port}",
                env,
                _by_ip(ip),
                DATA_PATH,
                Ports(outbound=port, plaintext=None, hbone=None),
            )
        )
    for spec in settings.direct_inbound:
        ip_text, sep, app_port_text = spec.partition("=")
        ip = ip_text.strip()
        if hbone.parse_authority(f"{ip}:1") is None and hbone.parse_authority(f"[{ip}]:1") is None:
            raise UserError(f"--direct-inbound: {spec!r} must be IP or IP=APP_PORT")
        targets: dict[int, tuple[str, int]] = {}
        plaintext: int | None = None
        if sep:
            if not app_port_text.isdigit():
                raise UserError(f"--direct-inbound: {spec!r}: APP_PORT must be a number")
            plaintext = hbone.INBOUND_PLAINTEXT_PORT
            targets[plaintext] = (ip, int(app_port_text))
        env = DirectNet(ip, targets, name=ip)
        pods.append(
            PodProxy(shared, f"direct-in-{ip}", env, _by_ip(ip), DATA_PATH, Ports(outbound=None, plaintext=plaintext))
        )
    return pods


def _by_ip(ip: str) -> Callable[[WorkloadIndex], Workload | None]:
    def lookup(index: WorkloadIndex) -> Workload | None:
        return index.workload_by_ip(ip)

    return lookup
