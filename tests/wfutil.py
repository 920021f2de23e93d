"""Helpers for tests that run the workflow: a temporary copy of the repository, a tiny config, dry-run plans."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
COPIED = ["Snakefile", "rules", "workflow", "src", "config/schema.yaml", "config/schemas", "envs", "profiles"]


def tiny_config(data_dir: Path) -> dict:
    """The foundation's tiny config (tests/configs/tiny.yaml) reading from `data_dir`."""
    config = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    return {"data_dir": str(data_dir), **config}


def study_config(study: str, data_dir: Path) -> dict:
    """The tiny config with every study off but `study`, whose file tests/configs/<study>.yaml replaces the
    top-level keys it names."""
    config = disable_studies(tiny_config(data_dir))
    config.update(yaml.safe_load((CONFIGS / f"{study}.yaml").read_text()))
    return config


STUDIES = ("faces", "actmax", "nefesi", "dissection", "lesions")
# In the all-studies run, a study's section feeds the atlas's unit pages (the studies that name each unit), so a
# change to any section re-writes the atlas layer's pages and index too (and the report, as before)
ATLAS_PAGES = {("atlas_pages", "model=resnet20_cifar, layer=layer1"), ("atlas", "")}


def all_studies_config(data_dir: Path) -> dict:
    """The tiny config with every study on, each study's section as tests/configs/<study>.yaml sets it (a study
    file's other keys, such as actmax's narrower datasets and models, are left out: the tiny ones hold them), and an
    atlas of a layer that nefesi and the dissection also label."""
    config = tiny_config(data_dir)
    for study in STUDIES:
        config[study] = yaml.safe_load((CONFIGS / f"{study}.yaml").read_text())[study]
    # the atlas of ResNet-20 layer1, which nefesi and the dissection both analyse (16 units, one shard): its unit
    # pages join nefesi's indexes, the dissection's IoU profile and the studies' mentions, the report lists it and
    # links its unit pages there, and its actmax images (every unit; no registry target optimises the layer) give
    # the actmax colour score's agreement rows (lesions) enough shared units for a rho; the layer3 registry target,
    # which only the dissection shares, gets N only
    config["atlas"] = {
        "enabled": True,
        "targets": [{"model": "resnet20_cifar", "layer": "layer1", "datasets": ["objects"], "actmax": True}],
        "actmax": {"seeds": 1, "steps": 4},
        "units_per_shard": 16,
        "n_bootstrap": 200,
        "top_n": 10,
        "exemplars_shown": 4,
    }
    return config


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [SNAKEMAKE, "--cores", "2", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, target: str = "report") -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run of `target` plans."""
    out = snakemake(workdir, "-n", target).stdout
    jobs, rule = set(), None
    for line in out.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):", line.strip()):
            rule = match.group(1)
            jobs.add((rule, ""))
        elif rule and (match := re.match(r"^wildcards: (.*)$", line.strip())):
            jobs.discard((rule, ""))
            jobs.add((rule, match.group(1)))
            rule = None
    return jobs


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def copy_face_images(dest: Path, data_dir: Path, n: int = 30) -> Path:
    """A writable folder source of the first `n` UTKFace images (so tests can change a file in a dataset folder)."""
    import pandas as pd

    (dest / "images").mkdir(parents=True, exist_ok=True)
    labels = pd.read_csv(data_dir / "faces_utkface" / "labels.csv").head(n)
    for name in labels["filename"]:
        shutil.copy2(data_dir / "faces_utkface" / "images" / name, dest / "images" / name)
    labels.to_csv(dest / "labels.csv", index=False)
    return dest


def copy_workflow(workdir: Path) -> Path:
    """Copy what the workflow needs (not results, not .venv) into `workdir`; return it."""
    for item in COPIED:
        source, target = REPO / item, workdir / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return workdir


def disable_studies(config: dict) -> dict:
    """Turn off every study whose schema exists (the foundation test runs the base stages only)."""
    for schema in (REPO / "config" / "schemas").glob("*.schema.yaml"):
        config.setdefault(schema.name.removesuffix(".schema.yaml"), {})["enabled"] = False
    return config
