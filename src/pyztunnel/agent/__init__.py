"""The node agent (istio-cni's role): pod network plumbing, redirection rules, per-pod sysctls, the ZDS server."""
