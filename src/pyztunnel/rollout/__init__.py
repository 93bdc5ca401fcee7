"""Proxy rollouts over a `ClusterBackend`: RollingUpdate (surge) and NodeDrain (OnDelete), resumable. See
docs/lifecycle.md."""
