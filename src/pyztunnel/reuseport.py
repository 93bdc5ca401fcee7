"""`net.ipv4.tcp_migrate_req`'s effect for our own listeners, without writing /proc/sys.

When a listener of a SO_REUSEPORT group closes, the kernel resets the connections still in its accept queue unless
the netns has `tcp_migrate_req=1` or the group carries a BPF program of type `SK_REUSEPORT` attached for
`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` (reference §1.7). On Kubernetes the proxy cannot set the sysctl in a pod's netns:
a non-privileged container's /proc/sys is mounted read-only by the runtime, and istio-cni does not set it. So the
proxy attaches the smallest such program to every in-pod listener it creates: two instructions that return
`SK_PASS` without selecting a socket, which leaves both the normal choice and the migration target to the kernel's
hash (net/core/sock_reuseport.c: no selection → `reuseport_select_sock_by_hash`). The program belongs to the
reuseport group, so it also covers the other instance's listeners in that group, and a listener handed over keeps it.

Loading needs CAP_BPF or CAP_SYS_ADMIN (ztunnel's DaemonSet grants SYS_ADMIN for setns) and Linux ≥ 5.14.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import socket
import struct
import threading

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SK_REUSEPORT = 21
BPF_SK_REUSEPORT_SELECT_OR_MIGRATE = 40
SO_ATTACH_REUSEPORT_EBPF = 52
SK_PASS = 1

# bpf(2) syscall numbers per architecture (asm/unistd.h).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}

# r0 = SK_PASS; exit. Each instruction: opcode, dst/src registers, 16-bit offset, 32-bit immediate.
_PROGRAM = struct.pack("<BBhi", 0xB7, 0, 0, SK_PASS) + struct.pack("<BBhi", 0x95, 0, 0, 0)
_LICENSE = ctypes.create_string_buffer(b"GPL")
_ATTR_SIZE = 128  # larger than the fields we set; the kernel requires the rest to be zero

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_lock = threading.Lock()
_program_fd: int | None = None


def _load() -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(f"no bpf(2) syscall number known for {platform.machine()}")
    insns = ctypes.create_string_buffer(_PROGRAM, len(_PROGRAM))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, …, prog_name[16] @48, expected_attach_type @68.
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_SK_REUSEPORT, len(_PROGRAM) // 8, ctypes.addressof(insns),
                     ctypes.addressof(_LICENSE))  # fmt: skip
    struct.pack_into("15s", attr, 48, b"pzt_migrate")
    struct.pack_into("<I", attr, 68, BPF_SK_REUSEPORT_SELECT_OR_MIGRATE)
    fd = int(_libc.syscall(ctypes.c_long(number), ctypes.c_int(BPF_PROG_LOAD), attr, ctypes.c_uint(_ATTR_SIZE)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}")
    os.set_inheritable(fd, False)
    return fd


def program_fd() -> int:
    """The process's one loaded program (loaded on first use; kept open so every listener can attach it)."""
    global _program_fd
    with _lock:
        if _program_fd is None:
            _program_fd = _load()
        return _program_fd


def attach_migrate(sock: socket.socket) -> None:
    """Attach the migrate program to the reuseport group of `sock` (a SO_REUSEPORT socket, bound or listening).
    Raises OSError when the kernel or the process's privileges do not allow it."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, program_fd())
