"""Linux ABI numbers the sans-IO code compares against (the values `socket` exports on Linux), so that it never
imports `socket`; tests/unit/test_linux_abi.py checks them against the socket module."""

from __future__ import annotations

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
MSG_CTRUNC = 0x08  # recvmsg: control data (the SCM_RIGHTS fds) truncated
MSG_TRUNC = 0x20  # recvmsg: datagram truncated
