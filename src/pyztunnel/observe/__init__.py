"""Observability: ztunnel-format logs and access logs, Prometheus metrics, the admin server."""
