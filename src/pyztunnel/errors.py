"""Errors a user can cause. The CLI turns them into one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import shutil


class UserError(Exception):
    """Something the user can fix: bad input, a missing prerequisite, a port in use. The message says what to do."""

    exit_code = 2


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UserError(f"{what} needs root (network namespaces, nftables); run it with sudo")


def require_program(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"'{name}' is not installed; run 'make install' (Debian package {package or name})")
    return path
