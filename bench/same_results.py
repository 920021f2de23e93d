"""Refactors keep results: run every study's tiny config on two source trees and compare what they wrote.

    python bench/same_results.py run REPO OUT [STUDY ...]        # tests/configs/<study>.yaml on REPO's code
    python bench/same_results.py compare BEFORE AFTER [STUDY ...] [--rtol R]

`run` copies REPO's workflow (Snakefile, rules, workflow, src, config schemas, envs, profiles) into
OUT/<study>/ and runs `snakemake report` there with that study's tiny test config (the foundation's tiny
config with only that study on). `compare` reads every table (Parquet, CSV), every JSON file (summary.json,
section.json, cards) and every Zarr array under BEFORE/<study>/results and AFTER/<study>/results, and prints
each difference: numbers must be equal; only values that are file paths or times may differ. Exit status 1
when anything differs or is missing. With `--rtol R` (a change of arithmetic, not a refactor: e.g. BatchNorm folded
into the convolutions) two floats count as equal when they are within R of each other, relative to the larger, or
within R absolutely near 0; the largest difference so allowed is printed, and any other difference (an integer, a
string, a float beyond R) is listed as before.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
COPIED = ["Snakefile", "rules", "workflow", "src", "config/schema.yaml", "config/schemas", "envs", "profiles"]
# Keys whose values name files or times: they may differ between two runs in two folders.
VOLATILE = {
    *("path", "paths", "log", "checkpoint_path", "created", "generated", "timestamp"),
    *("elapsed_s", "seconds", "train_seconds", "probe_seconds", "channels_per_second"),  # wall-clock measures
}
# Report prose (section.json's body_html and conclusion): rewording it is not a change of results.
PROSE = {"body_html", "conclusion"}
TOLERANCE = {"rtol": 0.0, "largest": 0.0, "where": ""}  # set by --rtol


def study_configs(data_dir: Path) -> dict[str, dict]:
    """Each study's tiny test config (tests/configs/<study>.yaml: only that study enabled)."""
    from wfutil import study_config

    studies = ("faces", "actmax", "nefesi", "dissection", "lesions", "atlas")
    return {study: study_config(study, data_dir) for study in studies}


def run(repo: Path, out: Path, only: list[str]) -> int:
    import yaml

    snakemake = str(Path(sys.executable).with_name("snakemake"))
    for study, config in study_configs((HERE.parent / "shared" / "data").resolve()).items():
        if only and study not in only:
            continue
        workdir = out / study
        for item in COPIED:
            source, target = repo / item, workdir / item
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)
        (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"{study}: running in {workdir}", flush=True)
        subprocess.run([snakemake, "--cores", "2", "report"], cwd=workdir, check=True, capture_output=True)
    return 0


def _differences(before, after, where: str):
    """Yield one line per differing leaf of two JSON-like values."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            if key in VOLATILE or key in PROSE:
                continue
            if key not in before or key not in after:
                yield f"{where}.{key}: only in {'after' if key in after else 'before'}"
            else:
                yield from _differences(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            yield f"{where}: {len(before)} items before, {len(after)} after"
        for index, (one, two) in enumerate(zip(before, after, strict=False)):
            yield from _differences(one, two, f"{where}[{index}]")
    elif isinstance(before, float) and isinstance(after, float) and math.isnan(before) and math.isnan(after):
        return
    elif isinstance(before, float) and isinstance(after, float) and TOLERANCE["rtol"] and before != after:
        if not math.isclose(before, after, rel_tol=TOLERANCE["rtol"], abs_tol=TOLERANCE["rtol"]):
            yield f"{where}: {before!r} before, {after!r} after"
        elif abs(before - after) / max(abs(before), abs(after), 1.0) > TOLERANCE["largest"]:
            TOLERANCE["largest"], TOLERANCE["where"] = abs(before - after) / max(abs(before), abs(after), 1.0), where
    elif before != after and not (isinstance(before, str) and ("/" in before or before.endswith(".log"))):
        yield f"{where}: {before!r} before, {after!r} after"


def _table(path: Path):
    import pandas as pd

    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return json.loads(table.drop(columns=[c for c in table.columns if c in VOLATILE]).to_json(orient="split"))


def _zarr_arrays(path: Path) -> dict:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: array[:].tolist() for name, array in group.arrays()}


def _load(path: Path):
    if path.suffix in (".parquet", ".csv"):
        return _table(path)
    if path.suffix == ".zarr":
        return _zarr_arrays(path)
    return json.loads(path.read_text())


def _artifacts(results: Path) -> list[Path]:
    found = [p for p in results.rglob("*") if p.suffix in (".parquet", ".csv", ".json") and ".zarr" not in p.parts[-2]]
    found += list(results.rglob("*.zarr"))
    return sorted(p.relative_to(results) for p in found if ".zarr/" not in p.relative_to(results).as_posix())


def compare(before: Path, after: Path, only: list[str]) -> int:
    problems, compared = [], 0
    for study in sorted(p.name for p in before.iterdir() if (p / "results").is_dir()):
        if only and study not in only:
            continue
        old, new = before / study / "results", after / study / "results"
        for relative in _artifacts(old):
            if not (new / relative).exists():
                problems.append(f"{study}/{relative}: missing after")
                continue
            compared += 1
            problems += [
                f"{study}/{relative}{line}" for line in _differences(_load(old / relative), _load(new / relative), "")
            ]
        problems += [f"{study}/{extra}: only after" for extra in set(_artifacts(new)) - set(_artifacts(old))]
    print(f"compared {compared} tables, JSON files and Zarr stores; {len(problems)} differences")
    if TOLERANCE["rtol"]:
        allowed = f"{TOLERANCE['largest']:.2e} ({TOLERANCE['where']})"
        print(f"largest difference allowed by --rtol {TOLERANCE['rtol']:g}: {allowed}")
    for line in problems[:200]:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("run", "compare"):
        sys.exit(__doc__)
    rest = sys.argv[4:]
    if "--rtol" in rest:
        at = rest.index("--rtol")
        TOLERANCE["rtol"] = float(rest[at + 1])
        rest = rest[:at] + rest[at + 2 :]
    first, second, only = Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve(), rest
    sys.exit(run(first, second, only) if sys.argv[1] == "run" else compare(first, second, only))
