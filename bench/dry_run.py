"""A finished run's `snakemake -n report`: seconds and CPU seconds, against what Snakemake costs before it reads this
workflow (importing its command line), measured in one run.

    .venv/bin/python bench/dry_run.py WORKDIR [--repeat 3]

WORKDIR is a finished run (a copy of the repository with its results). Rows: importing `snakemake.cli` (the floor
no workflow can go under), the dry run without the module-facts cache (`.snakemake/unitscope/codedeps.json`
removed before each repeat: every package module parsed) and with it (what a user's second dry run and every
cluster job's own Snakemake process pay). Medians of --repeat fresh processes; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def measure(command: list[str], cwd: Path, before=None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the child) of one run of `command`."""
    if before:
        before()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{result.stderr[-2000:]}")
    return wall, (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cache = args.workdir / ".snakemake" / "unitscope" / "codedeps.json"
    dry_run = [SNAKEMAKE, "--cores", "2", "-n", "report"]
    plan = subprocess.run(dry_run, cwd=args.workdir, capture_output=True, text=True).stdout
    if "Nothing to be done" not in plan:
        print(f"warning: {args.workdir} is not a finished run (the dry run plans jobs)", file=sys.stderr)
    rows = {
        "import snakemake.cli": [measure([sys.executable, "-c", "import snakemake.cli"], args.workdir)],
        "snakemake -n report, no facts cache": [],
        "snakemake -n report, facts cache": [],
    }
    for _ in range(args.repeat - 1):
        rows["import snakemake.cli"].append(measure([sys.executable, "-c", "import snakemake.cli"], args.workdir))
    for _ in range(args.repeat):
        rows["snakemake -n report, no facts cache"].append(
            measure(dry_run, args.workdir, before=lambda: cache.unlink(missing_ok=True))
        )
        rows["snakemake -n report, facts cache"].append(measure(dry_run, args.workdir))
    floor = medians(rows["import snakemake.cli"])[0]
    header = f"{'':40s} {'wall s':>8s} {'CPU s':>8s} {'wall / import':>14s}"
    print(f"{header}   (median of {args.repeat}, {os.cpu_count()} CPUs)")
    for name, runs in rows.items():
        wall, cpu = medians(runs)
        print(f"{name:40s} {wall:8.2f} {cpu:8.2f} {wall / floor:14.2f}")


if __name__ == "__main__":
    main()
