"""The `pyztunnel` subcommands: where each lives and what it is for, without importing any of them.

`cli.py` builds the command group from this table; `cluster up` checks with it that every `pyztunnel …` command of
a spec is in this build. It sits at the bottom of the layers, so both can read it.
"""

from __future__ import annotations

# name -> (module, attribute, one-line purpose). The purpose is shown by `pyztunnel --help` without importing.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "pyztunnel.demo",
        "demo",
        "Run the main job on the built-in default cluster: traffic, an upgrade, a report.",
    ),
    "cluster": ("pyztunnel.cluster.cli", "cluster", "The local one-machine cluster: nodes and pods in namespaces."),
    "agent": ("pyztunnel.agent.cli", "agent", "Node agent (istio-cni's role): pod plumbing, redirection, ZDS server."),
    "proxy": ("pyztunnel.proxy.cli", "proxy", "The node proxy (ztunnel): in-pod listeners, HBONE over mTLS."),
    "ca": ("pyztunnel.identity.cli", "ca", "Istio CA API (CreateCertificate) for node proxies; issue certificates."),
    "upgrade": (
        "pyztunnel.upgrade.cli",
        "upgrade",
        "Upgrade the node proxies (local cluster or Kubernetes): rolling, drain, canary, rollback.",
    ),
    "k8s": (
        "pyztunnel.k8s.cli",
        "k8s",
        "Kubernetes: the DaemonSet's manifests (the Helm chart's objects) without Helm.",
    ),
    "load": ("pyztunnel.load.cli", "load", "fortio-compatible load generator (HTTP/1.1 and TCP echo)."),
    "advise": ("pyztunnel.advise", "advise", "Recommend terminationGracePeriodSeconds from access logs."),
    "experiment": ("pyztunnel.experiment.cli", "experiment", "Reproduce the seeds' upgrade experiment and report."),
    "httpbin": ("pyztunnel.apps.httpbin", "httpbin", "Test backend: an httpbin-style HTTP server."),
    "tcp-echo": ("pyztunnel.apps.tcp_echo", "tcp_echo", "Test backend: a TCP server that echoes bytes."),
    "waypoint": ("pyztunnel.apps.waypoint", "waypoint", "A minimal waypoint: HBONE in, one L7 rule, HBONE out."),
    "settings": ("pyztunnel.cli", "show_settings", "List every setting: flag, environment variable, default, help."),
}
