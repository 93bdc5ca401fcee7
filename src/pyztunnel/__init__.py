"""pyztunnel: a ztunnel-compatible node proxy for ambient meshes, and the node machinery around it.

The map of the code is the README's layout section; the design is ../shared/DESIGN.md.
"""

import os as _os

__version__ = "0.1.0"

# gRPC's fork support (its pthread_atfork handlers) breaks processes that fork while a gRPC server or channel is
# active: the cluster controller serves ADS and spawns pods and `nft`, and about 3 % of its spawns lost their pipes
# (uvloop: "the handler is closed"). No pyztunnel process forks and then uses gRPC in the child, so it is off
# before gRPC is first imported (it reads the variable once).
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
