"""`python -m pyztunnel.kubeapi --kubeconfig PATH [--nodes N] [--sail]`: a stand-in cluster with Istio's ztunnel
DaemonSet (or a Sail `ZTunnel`) to try `pyztunnel upgrade --kubeconfig PATH` and kubectl against; Ctrl-C stops it."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from pyztunnel.kubeapi import seed
from pyztunnel.kubeapi.harness import StandIn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pyztunnel.kubeapi")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sail", action="store_true", help="a Sail operator owns the DaemonSet (ZTunnel default)")
    args = parser.parse_args()
    with StandIn(sail=args.sail) as api:
        if args.sail:
            api.seed(args.nodes, namespace="ztunnel")
            api.create("ztunnels", seed.ztunnel_cr())
        else:
            api.seed(args.nodes, daemonset=seed.ztunnel_daemonset())
        api.kubeconfig(args.kubeconfig)
        print(f"stand-in API server at {api.url}; kubeconfig {args.kubeconfig}; Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
