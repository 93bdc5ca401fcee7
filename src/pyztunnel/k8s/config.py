"""The kubeconfig, read as kubectl reads it, with one clear line for what is wrong with it."""

from __future__ import annotations

from pathlib import Path

from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError

from pyztunnel.errors import UserError


def load_config(path: Path, context: str | None) -> SingleConfig:
    if not path.is_file():
        raise UserError(f"--kubeconfig {path}: no such file")
    try:
        config = KubeConfig.from_file(path)
    except (ConfigError, OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"--kubeconfig {path}: not a usable kubeconfig ({exc})") from None
    if context is not None and context not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise UserError(f"--kubeconfig {path} has no context {context!r} (contexts: {known})")
    try:
        single = config.get(context_name=context)
    except ConfigError as exc:
        raise UserError(f"--kubeconfig {path}: {exc}; pick one with --context") from None
    if single is None:
        raise UserError(f"--kubeconfig {path}: no current-context; pick one with --context")
    return single
