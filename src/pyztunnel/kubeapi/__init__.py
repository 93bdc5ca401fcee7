"""A stand-in Kubernetes API server for tests and demos: the subset `pyztunnel upgrade --kubeconfig` and real kubectl
use (reference/kubernetes.md §4, §7c), with the controllers whose behaviour a node-proxy rollout depends on (a
DaemonSet controller following §3, ReplicaSets, PodDisruptionBudgets, a simulated kubelet and scheduler, and
optionally the Sail operator's ZTunnel reconcile). See docs/kubernetes.md for what it does and does not show."""
