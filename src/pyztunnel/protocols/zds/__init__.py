"""ZDS, the protocol between the node agent (istio-cni, the server) and the node proxy (ztunnel, the client).

Sans-IO (reference/ztunnel.md §2): one protobuf message per SOCK_SEQPACKET datagram, no length prefix. The package
turns datagrams (bytes + the number of fds that came with them + the recvmsg flags) into typed messages and back, and
holds the two protocol state machines (server.py, client.py; the codec in messages.py):

- `ServerConnection`: one agent-side connection. Await `ZdsHello`, send the snapshot one message at a time (each waits
  for its Ack), send `SnapshotSent`, then serve queued requests one at a time.
- `ClientState`: the proxy side, kept across reconnects as ztunnel's state manager is. Hello first, an Ack for every
  request (the caller sends it once it has acted), snapshot set tracking, reconcile on `SnapshotSent`.

File descriptors never enter this module: the decode functions return a decision (`Incoming.uses_fd`) and the caller
keeps the one fd an `AddWorkload` carries and closes every other fd it received, including on any error.
"""

from __future__ import annotations

from pyztunnel.protocols.zds.client import (
    ClientEvent as ClientEvent,
)
from pyztunnel.protocols.zds.client import (
    ClientState as ClientState,
)
from pyztunnel.protocols.zds.client import (
    DrainWorkload as DrainWorkload,
)
from pyztunnel.protocols.zds.client import (
    ForgetFromSnapshot as ForgetFromSnapshot,
)
from pyztunnel.protocols.zds.client import (
    NetnsId as NetnsId,
)
from pyztunnel.protocols.zds.client import (
    Reconcile as Reconcile,
)
from pyztunnel.protocols.zds.client import (
    ReplaceWorkload as ReplaceWorkload,
)
from pyztunnel.protocols.zds.client import (
    StartWorkload as StartWorkload,
)
from pyztunnel.protocols.zds.client import (
    Unchanged as Unchanged,
)
from pyztunnel.protocols.zds.messages import (
    ACK_TIMEOUT as ACK_TIMEOUT,
)
from pyztunnel.protocols.zds.messages import (
    HELLO_TIMEOUT as HELLO_TIMEOUT,
)
from pyztunnel.protocols.zds.messages import (
    LIVENESS_INTERVAL as LIVENESS_INTERVAL,
)
from pyztunnel.protocols.zds.messages import (
    MAX_DATAGRAM as MAX_DATAGRAM,
)
from pyztunnel.protocols.zds.messages import (
    VERSION_V1 as VERSION_V1,
)
from pyztunnel.protocols.zds.messages import (
    Ack as Ack,
)
from pyztunnel.protocols.zds.messages import (
    AddWorkload as AddWorkload,
)
from pyztunnel.protocols.zds.messages import (
    DelWorkload as DelWorkload,
)
from pyztunnel.protocols.zds.messages import (
    FdMisuse as FdMisuse,
)
from pyztunnel.protocols.zds.messages import (
    Hello as Hello,
)
from pyztunnel.protocols.zds.messages import (
    Incoming as Incoming,
)
from pyztunnel.protocols.zds.messages import (
    KeepWorkload as KeepWorkload,
)
from pyztunnel.protocols.zds.messages import (
    MalformedMessage as MalformedMessage,
)
from pyztunnel.protocols.zds.messages import (
    ProtocolError as ProtocolError,
)
from pyztunnel.protocols.zds.messages import (
    Request as Request,
)
from pyztunnel.protocols.zds.messages import (
    SnapshotSent as SnapshotSent,
)
from pyztunnel.protocols.zds.messages import (
    WorkloadInfo as WorkloadInfo,
)
from pyztunnel.protocols.zds.messages import (
    ZdsError as ZdsError,
)
from pyztunnel.protocols.zds.messages import (
    decode_ack as decode_ack,
)
from pyztunnel.protocols.zds.messages import (
    decode_hello as decode_hello,
)
from pyztunnel.protocols.zds.messages import (
    decode_request as decode_request,
)
from pyztunnel.protocols.zds.messages import (
    encode_ack as encode_ack,
)
from pyztunnel.protocols.zds.messages import (
    encode_hello as encode_hello,
)
from pyztunnel.protocols.zds.messages import (
    encode_request as encode_request,
)
from pyztunnel.protocols.zds.server import (
    Close as Close,
)
from pyztunnel.protocols.zds.server import (
    Completed as Completed,
)
from pyztunnel.protocols.zds.server import (
    Send as Send,
)
from pyztunnel.protocols.zds.server import (
    ServerAction as ServerAction,
)
from pyztunnel.protocols.zds.server import (
    ServerConnection as ServerConnection,
)
from pyztunnel.protocols.zds.server import (
    ServerPhase as ServerPhase,
)
from pyztunnel.protocols.zds.server import (
    SnapshotDone as SnapshotDone,
)
