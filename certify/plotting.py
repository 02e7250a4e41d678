"""What every PNG of the toolkit shares (smoothing curves, training curves, eps sweeps): a headless
matplotlib figure, a clear error when matplotlib is missing, and one way to label and save it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CertifyError


def figure(size: tuple[float, float] = (6.4, 4.2)) -> tuple[Any, Any]:
    """A new ``(fig, ax)`` on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise CertifyError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save(fig: Any, ax: Any, path: str | Path, *, xlabel: str, ylabel: str, title: str = "",
         ylim: tuple[float, float] | None = (0.0, 1.02), legend: dict | None = None) -> None:
    """Axis labels, grid, legend and title, then the PNG at ``path`` (120 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(**legend)
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
