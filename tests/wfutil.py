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
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
COPIED = ["Snakefile", "rules", "workflow", "src", "config/schema.yaml", "config/schemas", "envs", "profiles"]


def tiny_config(data_dir: Path) -> dict:
    objects = {
        "kind": "folder",
        "root": "objects_cifar10",
        "labels": "labels.csv",
        "path_column": "path",
        "label_column": "label",
    }
    imagenet = {"resize": 232, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    return {
        "data_dir": str(data_dir),
        "seed": 0,
        "datasets": {
            "faces": {
                "category": "face",
                "size": 12,
                "source": {
                    "kind": "folder",
                    "root": "faces_utkface",
                    "labels": "labels.csv",
                    "path_column": "filename",
                    "image_dir": "images",
                    "label_column": "gender",
                },
            },
            "scenes": {
                "category": "scene",
                "size": 6,
                "source": {
                    "kind": "folder",
                    "root": "scenes_intel",
                    "labels": "labels.csv",
                    "path_column": "path",
                    "image_dir": "images",
                    "label_column": "label",
                },
            },
            "objects": {"category": "object", "size": 20, "source": objects},
        },
        "models": {
            "mobilenet_v2_imagenet": {
                "arch": "torchvision.mobilenet_v2",
                "weights": "IMAGENET1K_V1",
                "checkpoint": "checkpoints/mobilenet_v2-b0353104.pth",
                "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                "preprocessing": imagenet,
            },
            "resnet20_cifar": {
                "arch": "cifar_resnet20",
                "checkpoint": "checkpoints/resnet20-12fca82f.th",
                "sha256": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
                "preprocessing": {**imagenet, "resize": 32, "crop": 32},
                "eval": {"dataset": "objects"},
            },
        },
        "extraction": {
            "targets": [
                {
                    "model": "mobilenet_v2_imagenet",
                    "datasets": ["faces", "scenes"],
                    "layers": ["features.18"],
                },
                {"model": "resnet20_cifar", "datasets": ["objects"], "layers": ["layer3"], "save_maps": True},
            ],
            "batch_size": 8,
            "num_workers": 0,
        },
    }


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
