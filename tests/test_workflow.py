"""End to end: the workflow on a tiny config in a temporary copy of the repository, then re-run planning."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zarr

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
COPIED = ["Snakefile", "rules", "workflow", "src", "config/schema.yaml", "envs", "profiles"]

pytestmark = pytest.mark.integration


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


def planned_jobs(workdir: Path) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run of `report` plans."""
    out = snakemake(workdir, "-n", "report").stdout
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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import DATA_DIR

    workdir = tmp_path_factory.mktemp("workflow")
    for item in COPIED:
        source, target = REPO / item, workdir / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    config = tiny_config(DATA_DIR)
    write_config(workdir, config)
    snakemake(workdir, "report")
    return workdir, config


def test_report_and_artifacts(finished_run):
    workdir, _ = finished_run
    html = (workdir / "results" / "report" / "index.html").read_text()
    assert "resnet20_cifar" in html and "features.18" in html
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    assert summary["datasets"]["faces"]["included"] == 12
    assert summary["datasets"]["objects"]["included"] == 20
    assert summary["extraction"]["mobilenet_v2_imagenet/faces/features.18"]["n_channels"] == 1280
    accuracy = summary["models"]["resnet20_cifar"]["accuracy"]
    assert summary["models"]["resnet20_cifar"]["accuracy_n"] == 20 and 0.5 <= accuracy <= 1.0
    store = zarr.open_group(str(workdir / "results/activations/resnet20_cifar/objects/layer3.zarr"), mode="r")
    assert store["means"].shape == (20, 64) and store["maps"].shape == (20, 64, 8, 8)
    for image in re.findall(r'<img src="([^"]+)"', html):
        assert (workdir / "results" / "report" / image).stat().st_size > 1000
    logs = {p.relative_to(workdir / "logs").as_posix() for p in (workdir / "logs").rglob("*.log")}
    assert {
        "data/faces.log",
        "models/resnet20_cifar.log",
        "extract/resnet20_cifar/objects/layer3.log",
        "report/report.log",
    } <= logs
    assert not list((workdir / "results").rglob(".*.tmp-*")), "a temporary artifact was left behind"


def test_rerun_plans_exactly_what_changed(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir) == set(), "a finished run must plan no job"

    changed = json.loads(json.dumps(config))
    changed["extraction"]["batch_size"] = 3
    write_config(workdir, changed)
    assert planned_jobs(workdir) == set(), "batch size changes no result"

    changed = json.loads(json.dumps(config))
    changed["datasets"]["faces"]["size"] = 10
    write_config(workdir, changed)
    faces_store = "model=mobilenet_v2_imagenet, dataset=faces, layer=features.18"
    assert planned_jobs(workdir) == {
        ("manifest", "dataset=faces"),
        ("extract", faces_store),
        ("figure_activations", faces_store),
        ("figure_datasets", ""),
        ("report", ""),
    }

    write_config(workdir, config)
    assert planned_jobs(workdir) == set()
    module = workdir / "src" / "unitscope" / "extract.py"
    module.write_text(module.read_text() + "\n# an edit\n")  # content, not just mtime: Snakemake compares checksums
    plan = planned_jobs(workdir)
    assert {rule for rule, _ in plan} == {"extract", "figure_activations", "report"}
    assert len([job for job in plan if job[0] == "extract"]) == 3


def test_snakemake_lint_has_no_findings():
    result = subprocess.run([SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr


def test_dry_run_does_not_import_torch():
    """Rule files and their helpers stay light: a dry run must not pay for torch."""
    probe = (
        "import sys, snakemake.cli\n"
        "sys.argv = ['snakemake', '-n', '--cores', '1', 'report', '--quiet']\n"
        "try:\n    snakemake.cli.main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_ABSENT')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "TORCH_ABSENT" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
