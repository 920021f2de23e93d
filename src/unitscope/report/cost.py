"""What the run cost: Snakemake's benchmark file of every job (benchmarks/<stage>/...tsv: wall seconds, CPU
seconds, peak resident memory), summed per stage, so a user sees where time goes before scaling up.

Read when the report is built, not declared as its inputs: the figures describe the jobs that made the current
results (a job not re-run keeps the benchmark of the run that made its outputs).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd


def read_benchmarks(folder: str | os.PathLike) -> pd.DataFrame:
    """One row per job: stage (the first folder under `folder`), job (the rest of the path), wall_s, cpu_s,
    peak_rss_mb. Unreadable files are skipped; Snakemake writes NA for a figure it could not measure."""
    rows = []
    folder = Path(folder)
    for path in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        try:
            table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if table.empty or "s" not in table:
            continue
        last = table.iloc[-1]  # a benchmark with repeats holds one row per repeat; the last is this run's
        rows.append(
            {
                "stage": path.relative_to(folder).parts[0],
                "job": str(path.relative_to(folder).with_suffix("")),
                "wall_s": float(last["s"]),
                "cpu_s": float(last.get("cpu_time", math.nan)),
                "peak_rss_mb": float(last.get("max_rss", math.nan)),
            }
        )
    return pd.DataFrame(rows, columns=["stage", "job", "wall_s", "cpu_s", "peak_rss_mb"])


def cost_by_stage(jobs: pd.DataFrame) -> list[dict]:
    """Per stage, most expensive first: jobs, summed wall and CPU seconds, the largest peak memory, the slowest
    job; then a total row (stage None). Empty when no benchmark was found."""
    if jobs.empty:
        return []
    rows = []
    for stage, group in jobs.groupby("stage"):
        slowest = group.loc[group["wall_s"].idxmax()]
        rows.append(_cost_row(stage, group) | {"slowest": slowest["job"], "slowest_s": float(slowest["wall_s"])})
    rows.sort(key=lambda row: -row["wall_s"])
    return [*rows, _cost_row(None, jobs)]


def _cost_row(stage: str | None, group: pd.DataFrame) -> dict:
    return {
        "stage": stage,
        "jobs": len(group),
        "wall_s": float(group["wall_s"].sum()),
        "cpu_s": float(group["cpu_s"].sum(min_count=1)),
        "peak_rss_mb": float(group["peak_rss_mb"].max()),
    }
