"""`pyztunnel upgrade`: the command over both backends (the local cluster, Kubernetes); above rollout/ and k8s/."""
