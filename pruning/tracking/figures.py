"""The figures a pipeline run logs to MLflow (matplotlib, no display)."""

from __future__ import annotations

from typing import Any


def accuracy_vs_macs(steps: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    macs = [s["macs"] / 1e6 for s in steps]
    ax.plot(macs, [s["accuracy"] for s in steps], "o-")
    for s, m in zip(steps, macs, strict=True):
        ax.annotate(f"step {s['step']}", (m, s["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs MACs over the pruning steps")
    ax.invert_xaxis()
    fig.tight_layout()
    return fig


def structure(rows: list[dict[str, Any]]):
    """Channels per layer, dense vs found (a removed block's layers at 0): what complexity-aware training kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * len(rows)), 3.5))
    x = range(len(rows))
    ax.bar(x, [r["dense"] for r in rows], color="0.8", label="dense")
    ax.bar(x, [r["found"] for r in rows], color="C0", label="found")
    ax.set_xticks(list(x), [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title("Structure found (0: layer of a removed block)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
