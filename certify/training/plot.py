"""Training curves: accuracies (clean, PGD, certified) and eps over the epochs, as a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_history(history: Sequence, path: str | Path, title: str = "") -> None:
    from ..plotting import figure, save

    fig, ax = figure((6.4, 4.0))
    import matplotlib.ticker

    epochs = [h.epoch for h in history]
    ax.plot(epochs, [h.train_acc for h in history], ":", color="grey", label="train (batch) accuracy")
    names = {"clean": "clean", "pgd": "PGD (upper bound)", "ibp": "certified: IBP", "crown": "certified: CROWN"}
    for key in [k for k in names if history and k in history[-1].eval]:
        ax.plot(epochs, [h.eval.get(key, float("nan")) for h in history], marker="o", ms=3, label=names[key])
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    eps_ax = ax.twinx()
    eps_ax.plot(epochs, [h.eps for h in history], "--", color="black", alpha=0.6, label="eps")
    eps_ax.set_ylabel("training eps")
    lines, labels = ax.get_legend_handles_labels()
    l2, lb2 = eps_ax.get_legend_handles_labels()
    save(fig, ax, path, xlabel="epoch", ylabel="accuracy on the held-out slice", title=title, ylim=(0, 1),
         legend={"handles": lines + l2, "labels": labels + lb2, "fontsize": 8, "loc": "lower right"})
