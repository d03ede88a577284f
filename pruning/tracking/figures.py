"""The figures a pipeline run logs to MLflow (matplotlib, no display)."""

from __future__ import annotations

from typing import Any


def tradeoff(metrics: dict[str, Any], batch_n: int, shipped: str):
    """What ships: the task metric of dense, pruned (after fine-tuning) and INT8 against their MACs and their measured
    ONNX Runtime latency at batch 1 and batch N (``metrics``: metrics.json and latency.json merged; ``shipped``: the
    variant that ships)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # pruned fp32 and INT8 have the same MACs and often the same metric: INT8 is a hollow diamond around the pruned
    # model's filled square, so that neither hides the other
    styles = {"dense": ("dense fp32", "o", 7, {}), "pruned": ("pruned fp32", "s", 6, {}),
              "quantized": ("pruned INT8", "D", 12, {"markerfacecolor": "none", "markeredgewidth": 2})}
    axes_spec = [("macs", 1e-6, "MACs (M)"), ("latency_ms_b1", 1.0, "latency p50, batch 1 (ms)"),
                 ("latency_ms_bN", 1.0, f"latency p50, batch {batch_n} (ms)")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5), sharey=True)
    for ax, (key, scale, label) in zip(axes, axes_spec, strict=True):
        for i, (variant, (name, marker, size, style)) in enumerate(styles.items()):
            m = metrics[variant]
            ax.plot(m[key] * scale, m["metric"], marker, color=f"C{i}", markersize=size + (2 if variant == shipped else 0),
                    label=name + (" (ships)" if variant == shipped else ""), **style)
        ax.set_xlabel(label)
        ax.margins(0.12)  # no marker cut in half by the frame
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {metrics.get('metric_name', 'metric')}")
    axes[0].legend(fontsize=7)
    fig.suptitle("What ships: metric vs cost (pruned after fine-tuning; latency measured by ONNX Runtime)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_vs_macs(steps: list[dict[str, Any]]):
    """The pruning steps of the prune stage: accuracy right after each step, before the fine-tune stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    macs = [s["macs"] / 1e6 for s in steps]
    ax.plot(macs, [s["accuracy"] for s in steps], "o-")
    for s, m in zip(steps, macs, strict=True):
        ax.annotate(f"step {s['step']}", (m, s["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("test accuracy (before fine-tuning)")
    ax.set_title("Accuracy vs MACs over the pruning steps (prune stage)", fontsize=9)
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


def search_front(points: list[dict[str, Any]], front: list[int], winner: int | None, metric_name: str):
    """A search's trials (``points``: one per trial that made a model, as :func:`pruning.search.study.points` writes
    them): the shipped model's task metric against its measured latency at batch 1 and against its MACs; trials that
    passed every gate filled, those that failed hollow, the Pareto front joined, the winner ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_trial = {p["trial"]: p for p in points}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "latency_ms_b1", "latency p50, batch 1 (ms), shipped model"),
                           (axes[1], "macs_m", "MACs (M)")):
        for passed, style in ((True, {"color": "C0"}), (False, {"facecolors": "none", "edgecolors": "C3"})):
            chosen = [p for p in points if p["passed"] == passed]
            ax.scatter([p[key] for p in chosen], [p["metric"] for p in chosen], s=28,
                       label="passed every gate" if passed else "failed a gate", **style)
        line = sorted((by_trial[n][key], by_trial[n]["metric"]) for n in front if n in by_trial)
        if line:
            ax.plot(*zip(*line, strict=True), "-", color="C0", alpha=0.5, label="Pareto front")
        if winner in by_trial:
            ax.scatter([by_trial[winner][key]], [by_trial[winner]["metric"]], s=160, facecolors="none",
                       edgecolors="k", label="winner")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {metric_name}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Search: {len(points)} trials with a model, {sum(p['passed'] for p in points)} passed every gate "
                 "(the front's latency measured again, alone)", fontsize=9)
    fig.tight_layout()
    return fig
