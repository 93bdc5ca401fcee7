"""The seeds' experiment: an upgrade of every node's proxy under fortio-style load, per scenario, and its report."""
