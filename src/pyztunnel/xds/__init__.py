"""Istio's control-plane protocol: delta XDS client (the proxy), server (our control plane), proto ↔ model."""
