"""Kubernetes: the rollout backend (backend*.py) and the deployment manifests."""
