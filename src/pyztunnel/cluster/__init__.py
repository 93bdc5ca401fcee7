"""The local one-machine cluster: spec, controller (bootstrap, kubelet, reconciler, publisher), API, CLI."""
