"""`pyztunnel advise`: terminationGracePeriodSeconds from the connection durations in ztunnel's access logs."""

from pyztunnel.advise.cli import advise

__all__ = ["advise"]
