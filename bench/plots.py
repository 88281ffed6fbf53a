"""Plots of a run (seaborn, PNG), drawn from the saved files by ``bench.report.build``.

* ``metrics.png``: the main metrics per paradigm with 95% bootstrap confidence intervals over users.
* ``tokens.png``: prompt length against history length per LLM paradigm, with the token budget, and the share
  of the history each prompt carries.
* ``efficiency.png`` (runs with ``--sweep`` over a numeric key): the main metrics against the swept value.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from bench import stats
from bench.cache import atomic_write_bytes
from bench.protocols import FULL
from bench.rundir import Run, display_name

DPI = 130


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _save(fig, path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())


def draw_all(run: Run) -> list[str]:
    """Draw every plot the run's data allows; returns the file names written. The plots read the main (first)
    protocol; every other protocol gets its own ``metrics-PROTOCOL.png``."""
    plt, sns = _pyplot()
    first, *others = run.protocols
    main_view = run.for_protocol(first)
    plots = [(name, draw, main_view, run.protocol_metrics(first)[:2]) for name, draw in (
        ("metrics.png", metrics_plot), ("tokens.png", tokens_plot), ("efficiency.png", efficiency_plot))]
    plots += [(f"metrics-{p}.png", metrics_plot, run.for_protocol(p), run.protocol_metrics(p)[:2]) for p in others]
    written = []
    for name, draw, view, metrics in plots:
        fig = draw(view, metrics, plt, sns)
        if fig is not None:
            _save(fig, run.path / name)
            plt.close(fig)
            written.append(name)
    return written


def _seed_averaged(run: Run, metrics: list[str]) -> pd.DataFrame:
    test = run.per_user[run.per_user["stage"] == "test"]
    return test.groupby(["paradigm", "user"], sort=False)[metrics].mean().reset_index()


def metrics_plot(run: Run, metrics: list[str], plt, sns):
    """Horizontal bars of each main metric per paradigm with 95% bootstrap CIs over users (seed-averaged),
    the same resampling as ``significance.csv``; each bar is labelled with its mean right of its interval."""
    data = _seed_averaged(run, metrics)
    order = run.paradigms
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 0.55 * len(order) + 1.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        table = data.pivot(index="user", columns="paradigm", values=metric)[order]
        means = table.mean().to_numpy()
        low, high = stats.bootstrap_ci(table.to_numpy(), 1000, run.config["report.seed"])
        sns.barplot(x=means, y=order, hue=order, palette="colorblind", legend=False, ax=ax, orient="h")
        ax.errorbar(means, range(len(order)), xerr=[means - low, high - means], fmt="none", ecolor="black",
                    elinewidth=1.2, capsize=4)
        for y, (mean, top) in enumerate(zip(means, high)):
            ax.text(top, y, f"  {mean:.4f}", va="center", ha="left", fontsize=9)
        ax.set_xlim(0, max(high.max() * 1.3, 1e-3))
        ax.set_xlabel(f"{display_name(metric)} (test, mean over users)")
        ax.set_ylabel("")
    protocol = run.protocols[0] if run.protocols != [FULL] else None
    where = f"{run.manifest.dataset}" + (f", protocol {protocol}" if protocol else "")
    fig.suptitle(f"{where}: accuracy per paradigm (error bars: 95% bootstrap CI over users)", fontsize=12)
    fig.tight_layout()
    return fig


def _plain_numbers():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:g}")


def _history_bins(lengths: pd.Series) -> pd.Series:
    """Geometric bins of history length (1, 2-3, 4-7, ...), labelled by the bin's geometric middle."""
    edges = 2 ** np.arange(0, int(np.ceil(np.log2(max(lengths.max(), 1)))) + 2)
    index = np.searchsorted(edges, lengths.to_numpy(), side="right") - 1
    low, high = edges[index], edges[index + 1] - 1
    return pd.Series(np.sqrt(low * high), index=lengths.index)


def tokens_plot(run: Run, metrics: list[str], plt, sns):
    """Prompt tokens and history carried, against history length, per LLM paradigm (first seed, test)."""
    tokens = run.tokens
    if tokens.empty:
        return None
    data = tokens.assign(prompt=tokens["hard_tokens"] + tokens["soft_tokens"],
                         carried=100 * tokens["history_kept"] / tokens["history_len"].clip(lower=1),
                         history=_history_bins(tokens["history_len"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    style = {"hue": "paradigm", "style": "paradigm", "markers": True, "dashes": True, "errorbar": None,
             "palette": "colorblind"}
    sns.lineplot(data=data, x="history", y="prompt", ax=axes[0], **style)
    budget = run.manifest.token_budget
    if budget:
        axes[0].axhline(budget, color="black", linestyle="--", linewidth=1)
        axes[0].text(0.01, budget, f"token budget ({budget})", transform=axes[0].get_yaxis_transform(),
                     va="bottom", fontsize=9)
    axes[0].set_ylabel("prompt length (tokens, incl. soft positions)")
    axes[0].set_ylim(0, max(data["prompt"].max(), budget or 0) * 1.12)
    sns.lineplot(data=data, x="history", y="carried", ax=axes[1], legend=False, **style)
    axes[1].set_ylabel("history carried in the prompt (% of items)")
    axes[1].set_ylim(0, 105)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_plain_numbers())
        ax.set_xlabel("user history length (items, log scale)")
    fig.suptitle(f"{run.manifest.dataset}: prompt cost per user (test prompts, mean per history-length bin)",
                 fontsize=12)
    fig.tight_layout()
    return fig


def efficiency_plot(run: Run, metrics: list[str], plt, sns):
    """Main metrics against the swept value, one line per paradigm, error bars = 95% CI over users."""
    sweep = run.manifest.sweep
    if not sweep or not all(isinstance(v, (int, float)) for v in sweep["values"]):
        return None
    labels = sweep["labels"]
    data_all = _seed_averaged(run, metrics)
    data = data_all[data_all["paradigm"].isin(labels)]
    data = data.assign(value=data["paradigm"].map(lambda p: labels[p]["value"]),
                       family=data["paradigm"].map(lambda p: labels[p]["paradigm"]))
    key = sweep["key"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sns.lineplot(data=data, x="value", y=metric, hue="family", marker="o", errorbar=("ci", 95), n_boot=1000,
                     seed=run.config["report.seed"], palette="colorblind", ax=ax, err_style="bars",
                     err_kws={"capsize": 4})
        references = data_all[~data_all["paradigm"].isin(labels)].groupby("paradigm", sort=False)[metric].mean()
        for name, mean in references.items():
            ax.axhline(mean, color="grey", linestyle=":", linewidth=1.2)
            ax.text(0.01, mean, f" {name}", transform=ax.get_yaxis_transform(), va="bottom", fontsize=9,
                    color="dimgrey")
        ax.set_xlabel(key.rsplit(".", 1)[-1] + (" (share of training samples)" if key.endswith("fraction")
                                                 else ""))
        ax.set_ylabel(f"{display_name(metric)} (test)")
        if min(sweep["values"]) > 0 and max(sweep["values"]) / min(sweep["values"]) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(sorted(sweep["values"]))
        ax.xaxis.set_major_formatter(_plain_numbers())
        ax.xaxis.set_minor_formatter("")
        ax.legend(title="paradigm", fontsize=9)
    fig.suptitle(f"{run.manifest.dataset}: {key} sweep (error bars: 95% CI over users)", fontsize=12)
    fig.tight_layout()
    return fig
