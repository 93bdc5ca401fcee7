"""The local cluster for real: namespaces, veths, DNAT, supervised pods; and that `down` leaves nothing behind.

Cluster names start with `tcl` so they never collide with the demo. Every fixture runs `cluster down` in `finally`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyztunnel.cluster import manage, spec
from pyztunnel.cluster.client import Client
from pyztunnel.cluster.layout import Layout
from pyztunnel.errors import UserError
from tests.conftest import require

# Other worktrees may run these tests at the same time: names are unique per run (and never `demo`).
RUN = "".join(random.choices(string.ascii_lowercase + string.digits, k=4))


def cname(n: int) -> str:
    return f"tcl{n}{RUN}"


# A stand-in for httpbin (which lives in another component): answers /status/<code> with that code.
STATUS_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


def plain_spec() -> spec.LoadedSpec:
    doc: dict[str, Any] = {
        "nodes": [{"name": "node-1"}, {"name": "node-2"}, {"name": "node-3"}],
        "agent": {"enabled": False},
        "proxy": {"enabled": False},
        "ca": {"enabled": False},
        "deployments": [
            {
                "name": "client",
                "command": ["sleep", "infinity"],
                "terminationGracePeriodSeconds": 1,
                "nodeName": "node-1",
            },
            {
                "name": "backend",
                "replicas": 2,
                "command": [sys.executable, "-c", STATUS_SERVER, "8080"],
                "ports": [8080],
                "readinessProbe": {"httpGet": {"path": "/status/200", "port": 8080}},
                "terminationGracePeriodSeconds": 2,
            },
            {
                # On the client's node: its VIP exercises the hairpin path (DNAT back into the same bridge).
                "name": "local",
                "command": [sys.executable, "-c", STATUS_SERVER, "8080"],
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "terminationGracePeriodSeconds": 2,
                "nodeName": "node-1",
            },
        ],
        "services": [
            {"name": "backend", "selector": {"app": "backend"}, "ports": [{"port": 8000, "targetPort": 8080}]},
            {"name": "local", "selector": {"app": "local"}, "ports": [{"port": 8001, "targetPort": 8080}]},
        ],
    }
    return spec.parse(yaml.safe_dump(doc), "test-spec.yaml")


def cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyztunnel", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def fetch(name: str, *urls: str) -> list[str]:
    out = cli("exec", "--name", name, "client", "--", sys.executable, "-m", "pyztunnel.cluster.fetch", *urls)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def assert_vip_answers(state: dict[str, Any]) -> None:
    """GET through the backend VIP; on failure say what the node's DNAT and the controller held."""
    got = fetch(cname(1), "http://10.96.0.10:8000/status/418")
    if got == ["418"]:
        return
    node = next(n for n in state["nodes"] if n["name"] == "node-1")
    rules = subprocess.run(
        ["ip", "netns", "exec", node["netns"], "nft", "list", "table", "ip", "pzt-svc"], capture_output=True, text=True
    ).stdout
    log = Layout.of(cname(1)).log("controller").read_text()[-3000:]
    pods = [(p["name"], p["node"], p["ip"], p["ready"], p["phase"]) for p in state["pods"]]
    pytest.fail(f"VIP answered {got}; endpoints {state['services'][0]['endpoints']}; pods {pods}\n{rules}\n{log}")


def host_view() -> tuple[str, str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line.split(":", 2)[1] for line in links.splitlines()), tables


def leftovers(name: str) -> list[str]:
    found = (
        [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"pzt-{name}-")]
        if os.path.isdir("/run/netns")
        else []
    )
    layout = Layout.of(name)
    if layout.root.exists():
        found.append(f"state dir {layout.root}")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(layout.root) in argv:
                found.append(f"process {pid}: {argv}")
    return found


@pytest.fixture(scope="module")
def plain() -> Iterator[dict[str, Any]]:
    require(os.geteuid() == 0, "root")
    name = cname(1)
    asyncio.run(manage.down(name))
    try:
        yield manage.up(plain_spec(), name, timeout=60)
    finally:
        asyncio.run(manage.down(name))


def test_up_builds_nodes_and_ready_pods(plain: dict[str, Any]) -> None:
    assert plain["ready"]
    assert [n["ip"] for n in plain["nodes"]] == ["10.240.0.1", "10.240.0.2", "10.240.0.3"]
    backends = [p for p in plain["pods"] if p["owner"]["name"] == "backend"]
    assert len(backends) == 2 and all(p["ready"] for p in backends)
    assert len({p["node"] for p in backends}) == 2  # replicas spread
    svc = plain["services"][0]
    assert svc["vip"] == "10.96.0.10"
    assert sorted(svc["endpoints"]) == sorted(p["ip"] for p in backends)


def bridge_macs(state: dict[str, Any]) -> list[str]:
    return [
        json.loads(
            subprocess.run(
                ["ip", "-j", "-n", n["netns"], "link", "show", "cbr0"], capture_output=True, text=True, check=True
            ).stdout
        )[0]["address"]
        for n in state["nodes"]
    ]


def test_http_to_pod_ip_and_service_vip(plain: dict[str, Any]) -> None:
    backends = [p for p in plain["pods"] if p["owner"]["name"] == "backend"]
    urls = [f"http://{p['ip']}:8080/status/418" for p in backends] + ["http://10.96.0.10:8000/status/418"] * 6
    assert fetch(cname(1), *urls) == ["418"] * len(urls)


def test_service_vip_with_an_endpoint_on_the_clients_own_node(plain: dict[str, Any]) -> None:
    local = next(p for p in plain["pods"] if p["owner"]["name"] == "local")
    client = next(p for p in plain["pods"] if p["owner"]["name"] == "client")
    assert local["node"] == client["node"]
    assert plain["services"][1]["endpoints"] == [local["ip"]]
    assert fetch(cname(1), *["http://10.96.0.11:8001/status/418"] * 3) == ["418"] * 3


def test_exec_passes_the_exit_code(plain: dict[str, Any]) -> None:
    out = cli("exec", "--name", cname(1), "client", "--", "sh", "-c", "exit 7")
    assert out.returncode == 7
    out = cli("exec", "--name", cname(1), "client", "--", "ip", "-o", "-4", "addr", "show", "eth0")
    client = next(p for p in plain["pods"] if p["owner"]["name"] == "client")
    assert f"inet {client['ip']}/24" in out.stdout


def test_status_table_and_json(plain: dict[str, Any]) -> None:
    out = cli("status", "--name", cname(1))
    assert out.returncode == 0, out.stderr
    assert "10.96.0.10" in out.stdout and "node-3" in out.stdout
    state = json.loads(cli("status", "--name", cname(1), "--json").stdout)
    assert state["name"] == cname(1)


def test_deleted_pod_is_replaced_and_endpoints_follow(plain: dict[str, Any]) -> None:
    client = Client(Layout.of(cname(1)), cname(1))
    victim = next(p for p in client.state()["pods"] if p["owner"]["name"] == "backend")
    out = cli("delete-pod", "--name", cname(1), victim["name"])
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 30
    while True:
        state = client.state()
        backends = [p for p in state["pods"] if p["owner"]["name"] == "backend"]
        if (
            len(backends) == 2
            and all(p["ready"] for p in backends)
            and victim["name"] not in {p["name"] for p in backends}
        ):
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.05)  # polling the controller with a deadline [noqa: sleep-ok]
    assert sorted(state["services"][0]["endpoints"]) == sorted(p["ip"] for p in backends)
    assert not os.path.exists(f"/run/netns/pzt-{cname(1)}-pod-{victim['name']}")
    assert_vip_answers(state)


def test_up_refuses_an_existing_cluster(plain: dict[str, Any]) -> None:
    out = cli("up", "--name", cname(1), "--no-mesh")
    assert out.returncode == 2
    assert "already exists" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_down_after_kill_9_of_every_process_leaves_nothing() -> None:
    require(os.geteuid() == 0, "root")
    name = cname(2)
    before = host_view()
    asyncio.run(manage.down(name))
    try:
        state = manage.up(plain_spec(), name, timeout=60)
        pids = [state["controllerPid"], *(p["pid"] for p in state["pods"] if p["pid"])]
        for pid in pids:
            os.kill(pid, 9)
        out = cli("down", "--name", name)
        assert out.returncode == 0, out.stderr
        assert leftovers(name) == []
        assert host_view() == before
        again = cli("down", "--name", name)  # idempotent
        assert again.returncode == 0 and "nothing to remove" in again.stdout
    finally:
        asyncio.run(manage.down(name))


def tiny_spec() -> spec.LoadedSpec:
    doc = {"nodes": [{"name": "node-1"}], "agent": {"enabled": False}, "proxy": {"enabled": False}}
    doc |= {"ca": {"enabled": False}, "deployments": [], "services": []}
    return spec.parse(yaml.safe_dump(doc), "tiny.yaml")


def test_down_all_removes_every_cluster_of_its_state_dir_and_no_other(tmp_path: Path) -> None:
    """`down --all` through a state dir of this test's own: its clusters go, a cluster of another state dir (as a
    concurrent run's) stays."""
    require(os.geteuid() == 0, "root")
    base = tmp_path / "state"
    mine, other = [cname(7), cname(8)], cname(9)
    try:
        for name in mine:
            manage.up(tiny_spec(), name, base=base, timeout=60)
        manage.up(tiny_spec(), other, timeout=60)
        out = cli("down", "--all", env={"PYZTUNNEL_STATE_DIR": str(base)})
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.splitlines()) == [f"cluster {n} removed" for n in sorted(mine)], out.stdout
        for name in mine:
            assert leftovers(name) == [] and not (base / name).exists()
        assert manage.exists(other, Layout.of(other)) and Client(Layout.of(other), other).state()["ready"]
        again = cli("down", "--all", env={"PYZTUNNEL_STATE_DIR": str(base)})
        assert again.returncode == 0 and again.stdout == "no cluster to remove\n", again.stdout
    finally:
        for name in mine:
            asyncio.run(manage.down(name, base))
        asyncio.run(manage.down(other))


def test_evict_wait_answers_while_probes_race_the_cancel() -> None:
    """The controller hang seen in CI (`evict?wait=1` unanswered): a deletion's cancel that lands as a readiness probe
    completes was lost in `asyncio.wait_for`, and the deletion waited for the probe loop forever. Probes that run
    back to back (HTTP and TCP) make that race likely: with the old probes about one eviction in three hung."""
    require(os.geteuid() == 0, "root")
    name = cname(10)
    doc = yaml.safe_load(tiny_spec().text)
    doc["deployments"] = [
        {
            "name": kind,
            "replicas": 2,
            "command": [sys.executable, "-c", STATUS_SERVER, "8080"],
            "readinessProbe": {probe: {"port": 8080, **extra}, "periodSeconds": 0.001},
            "terminationGracePeriodSeconds": 1,
        }
        for kind, probe, extra in (("web", "httpGet", {"path": "/status/200"}), ("tcp", "tcpSocket", {}))
    ]
    try:
        state = manage.up(spec.parse(yaml.safe_dump(doc), "race.yaml"), name, timeout=60)
        client = Client(Layout.of(name), name, timeout=10)
        for i in range(16):
            ready = wait_state(client, "a ready pod", lambda state: any(p["ready"] for p in state["pods"]))
            pods = [p["name"] for p in ready["pods"] if p["ready"]]
            pod = pods[i % len(pods)]
            started = time.monotonic()
            client.call("POST", f"/v1/pods/{pod}/evict?wait=1")  # ControllerUnavailable after 10 s: the hang
            assert time.monotonic() - started < 5, f"evicting {pod} took {time.monotonic() - started:.1f}s"
            assert pod not in {p["name"] for p in client.state()["pods"]}
        assert state["ready"]
    finally:
        asyncio.run(manage.down(name))


def test_failed_up_removes_what_it_built() -> None:
    require(os.geteuid() == 0, "root")
    name = cname(3)
    doc = yaml.safe_load(plain_spec().text)
    doc["deployments"][1]["command"] = ["sh", "-c", "exit 3"]  # never ready
    loaded = spec.parse(yaml.safe_dump(doc), "broken.yaml")
    try:
        with pytest.raises(UserError, match=r"pod backend-\w+ keeps exiting \(5 restarts\)"):
            manage.up(loaded, name, timeout=30)
        assert leftovers(name) == []
    finally:
        asyncio.run(manage.down(name))


def test_default_spec_without_mesh_client_gateway_httpbin() -> None:
    """The seed scenario's path with every pod outside the mesh: client → gateway VIP → nginx → httpbin VIP."""
    require(os.geteuid() == 0, "root")
    require(manage.module_available("pyztunnel.apps.httpbin"), "pyztunnel httpbin (h/observe)")
    name = cname(4)
    asyncio.run(manage.down(name))
    try:
        state = manage.up(spec.load(None), name, no_mesh=True, timeout=60)
        gateway = next(s for s in state["services"] if s["name"] == "gateway")
        assert fetch(name, *[f"http://{gateway['vip']}/status/418"] * 4) == ["418"] * 4
    finally:
        asyncio.run(manage.down(name))


def wait_state(client: Client, what: str, done: Any, limit: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        state = client.state()
        if done(state):
            return state
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {json.dumps(state)[:2000]}"
        time.sleep(0.05)  # polling the controller with a deadline [noqa: sleep-ok]


def backends_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in state["pods"] if p["owner"]["name"] == "backend" and p["phase"] != "Terminating"]


def test_a_pod_whose_process_dies_is_restarted(plain: dict[str, Any]) -> None:
    client = Client(Layout.of(cname(1)), cname(1))
    pod = next(p for p in client.state()["pods"] if p["owner"]["name"] == "client")
    os.kill(pod["pid"], 9)

    def restarted(state: dict[str, Any]) -> bool:
        now = next(p for p in state["pods"] if p["name"] == pod["name"])
        return bool(now["restarts"] == pod["restarts"] + 1 and now["ready"] and now["pid"] not in (None, pod["pid"]))

    wait_state(client, "the restart", restarted)


def test_scale_cordon_and_drain(plain: dict[str, Any]) -> None:
    client = Client(Layout.of(cname(1)), cname(1))
    assert cli("scale", "--name", cname(1), "backend", "3").returncode == 0
    state = wait_state(client, "3 ready backends", lambda s: len([p for p in backends_of(s) if p["ready"]]) == 3)
    assert len(state["services"][0]["endpoints"]) == 3
    out = cli("drain", "--name", cname(1), "node-2")
    assert out.returncode == 0, out.stderr
    state = wait_state(
        client, "3 ready backends off node-2", lambda s: len([p for p in backends_of(s) if p["ready"]]) == 3
    )
    assert all(p["node"] != "node-2" for p in state["pods"])
    assert next(n for n in state["nodes"] if n["name"] == "node-2")["cordoned"]
    assert cli("uncordon", "--name", cname(1), "node-2").returncode == 0
    assert cli("scale", "--name", cname(1), "backend", "2").returncode == 0
    state = wait_state(
        client, "2 backends", lambda s: len([p for p in s["pods"] if p["owner"]["name"] == "backend"]) == 2
    )
    assert len(state["services"][0]["endpoints"]) == 2
    # Pods came and went on every node: the bridges kept their MACs, so pods' ARP entries for the gateway stay right.
    assert bridge_macs(state) == ["02:00:0a:f4:01:01", "02:00:0a:f4:02:01", "02:00:0a:f4:03:01"]
    assert_vip_answers(state)


def test_default_spec_in_the_mesh() -> None:
    """The seed scenario: client (outside the mesh) → gateway VIP → nginx in the mesh → httpbin in the mesh."""
    require(os.geteuid() == 0, "root")
    missing = manage.missing_components(spec.load(None).spec)
    require(not missing, "; ".join(missing))
    name = cname(5)
    asyncio.run(manage.down(name))
    try:
        state = manage.up(spec.load(None), name, timeout=60)
        assert all(p["ready"] for p in state["proxies"]) and len(state["proxies"]) == 3
        gateway = next(s for s in state["services"] if s["name"] == "gateway")
        assert fetch(name, *[f"http://{gateway['vip']}/status/418"] * 4) == ["418"] * 4
        mesh_pod = next(p for p in state["pods"] if p["mesh"])
        rules = subprocess.run(
            ["ip", "netns", "exec", mesh_pod["netns"], "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "15001" in rules and "15006" in rules
        client_pod = next(p for p in state["pods"] if not p["mesh"])
        rules = subprocess.run(
            ["ip", "netns", "exec", client_pod["netns"], "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "15001" not in rules
    finally:
        asyncio.run(manage.down(name))


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_up_and_down_need_root() -> None:
    require(os.geteuid() == 0, "root (to drop it)")
    for command in ("up", "down"):
        out = subprocess.run(
            [*NOBODY, sys.executable, "-m", "pyztunnel", "cluster", command, "--name", cname(8)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert out.returncode == 2
        assert (
            out.stderr.strip()
            == f"error: pyztunnel cluster {command} needs root (network namespaces, nftables); run it with sudo"
        )
