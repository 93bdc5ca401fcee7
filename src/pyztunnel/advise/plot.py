"""`--plot FILE`: a histogram of connection durations with the current and recommended drains marked."""

from __future__ import annotations

from pathlib import Path

from pyztunnel.errors import UserError


def plot(durations: list[float], current_drain: int, recommended_drain: int, quantile_label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = [max(d, 0.001) for d in durations]
    low, high = min(positive), max(*positive, recommended_drain, current_drain) * 1.2
    bins = [low * (high / low) ** (i / 60) for i in range(61)] if high > low else 10
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        ax.hist(positive, bins=bins, color="#4878a8")
        ax.set_xscale("log")
        ax.set_yscale("log" if len(positive) > 1000 else "linear")
        ax.set_xlabel("connection duration (s)")
        ax.set_ylabel("connections")
        ax.axvline(current_drain, color="#c0392b", linestyle="--", label=f"current drain {current_drain} s")
        ax.axvline(
            recommended_drain,
            color="#27ae60",
            label=f"recommended drain {recommended_drain} s ({quantile_label} + margin)",
        )
        ax.legend()
        ax.set_title(f"{len(durations)} connections from ztunnel access logs")
        try:
            fig.savefig(path, dpi=100, bbox_inches="tight")
        except OSError as exc:
            raise UserError(f"cannot write the plot to {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
