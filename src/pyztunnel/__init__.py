"""pyztunnel: a ztunnel-compatible node proxy for ambient meshes, and the node machinery around it.

The map of the code is the README's layout section; the design is ../shared/DESIGN.md.
"""

__version__ = "0.1.0"
