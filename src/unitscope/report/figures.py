"""Figures for the report: every plot states its units and sample sizes."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unitscope.report.plotting import save_figure


def datasets_figure(manifests: dict[str, pd.DataFrame], path: str | os.PathLike) -> None:
    """Bar chart: images included and excluded per dataset."""
    names = list(manifests)
    included = [int(m["included"].sum()) for m in manifests.values()]
    excluded = [int((~m["included"]).sum()) for m in manifests.values()]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3.2))
    ax.bar(names, included, label="included", color="#4477aa")
    ax.bar(names, excluded, bottom=included, label="excluded (unreadable)", color="#cc6677")
    for x, (inc, exc) in enumerate(zip(included, excluded, strict=True)):
        ax.text(x, inc + exc, f"{inc}" + (f" (+{exc})" if exc else ""), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title("Images per dataset")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def activation_figure(means: np.ndarray, title: str, path: str | os.PathLike) -> None:
    """Left: channels sorted by mean activation with 95% intervals of the mean; right: value histogram."""
    n_images, n_channels = means.shape
    channel_mean = means.mean(axis=0)
    half_width = 1.96 * means.std(axis=0, ddof=1) / np.sqrt(n_images) if n_images > 1 else np.zeros(n_channels)
    order = np.argsort(channel_mean)[::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    rank = np.arange(n_channels)
    left.fill_between(
        rank,
        (channel_mean - half_width)[order],
        (channel_mean + half_width)[order],
        alpha=0.3,
        color="#4477aa",
        label="95% CI of the mean",
    )
    left.plot(rank, channel_mean[order], color="#4477aa", lw=1, label="mean over images")
    left.set_xlabel(f"channel rank (of {n_channels})")
    left.set_ylabel("spatial-mean activation")
    left.set_title(f"Channels by mean activation (N = {n_images} images)", fontsize=9)
    left.legend(fontsize=7)
    right.hist(means.ravel(), bins=60, color="#228833")
    right.set_yscale("log")
    right.set_xlabel("spatial-mean activation (image × channel)")
    right.set_ylabel("count")
    right.set_title(f"All values (N × C = {n_images} × {n_channels})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
