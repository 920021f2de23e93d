"""End to end: the workflow on a tiny config in a temporary copy of the repository, then re-run planning."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import zarr
from wfutil import REPO, SNAKEMAKE, copy_workflow, disable_studies, planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished_run(tiny_local_run):
    return tiny_local_run


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
        "extract/resnet20_cifar/objects.log",
        "extract/resnet20_cifar/objects/layer3.log",
        "report/report.log",
    } <= logs
    assert not list((workdir / "results").rglob(".*.tmp-*")), "a temporary artifact was left behind"
    assert not list((workdir / "results" / "activations").glob("*/*.pass")), "an extraction pass outlived its stores"


def test_every_job_has_a_benchmark_and_the_report_shows_the_cost(finished_run):
    workdir, _ = finished_run
    benchmarks = {
        p.relative_to(workdir / "benchmarks").with_suffix("").as_posix()
        for p in (workdir / "benchmarks").rglob("*.tsv")
    }
    logs = {p.relative_to(workdir / "logs").with_suffix("").as_posix() for p in (workdir / "logs").rglob("*.log")}
    assert logs - {"report/report"} <= benchmarks  # the report's own is written after it has run
    html = (workdir / "results" / "report" / "index.html").read_text()
    cost = html[html.index('<h3 id="cost">') : html.index('<h3 id="config">')]
    stages = re.findall(r"<tr><td>(\w+)</td><td class=\"num\">(\d+)</td>", cost)
    assert {stage for stage, _ in stages} == {"data", "models", "extract", "atlas", "report"}
    assert dict(stages)["extract"] == str(3 + 3)  # a pass per (model, dataset) and a published store per layer


def test_snakemake_report_zip(finished_run):
    workdir, _ = finished_run
    snakemake(workdir, "--report", "results/report.zip", "report")
    import zipfile

    names = zipfile.ZipFile(workdir / "results" / "report.zip").namelist()
    assert any(name.endswith("datasets.png") for name in names)
    assert sum(name.endswith(".png") for name in names) >= 4


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
    faces_pass = "model=mobilenet_v2_imagenet, dataset=faces"
    assert planned_jobs(workdir) == {
        ("manifest", "dataset=faces"),
        ("extract", faces_pass),
        ("extract_store", faces_store),
        ("figure_activations", faces_store),
        ("figure_datasets", ""),
        ("report", ""),
    }

    write_config(workdir, config)
    assert planned_jobs(workdir) == set()
    faces_folder = workdir / "data" / "faces" / "images"
    image = sorted(faces_folder.iterdir())[0]
    original = image.read_bytes()
    image.write_bytes(sorted(faces_folder.iterdir())[1].read_bytes())  # a file in the dataset folder changes
    try:
        assert planned_jobs(workdir) == {
            ("manifest", "dataset=faces"),
            ("extract", faces_pass),
            ("extract_store", faces_store),
            ("figure_activations", faces_store),
            ("figure_datasets", ""),
            ("report", ""),
        }
    finally:
        image.write_bytes(original)
    assert planned_jobs(workdir) == set(), "restoring the file's content plans nothing (Snakemake compares checksums)"
    module = workdir / "src" / "unitscope" / "extract.py"
    source = module.read_text()
    module.write_text(source + "\n# an edit\n")  # content, not just mtime: Snakemake compares checksums
    plan = planned_jobs(workdir)
    assert {rule for rule, _ in plan} == {
        "extract",
        "extract_store",
        "figure_activations",
        "atlas_categories",  # the atlas shard's evidence read from the new stores, and what it feeds
        "atlas_lesion",
        "atlas_top_n",  # the layer's top-N: the stores' peaks
        "atlas_exemplars",
        "atlas_indexes",
        "atlas_gather",
        "atlas_pages",
        "atlas",
        "report",
    }
    assert len([job for job in plan if job[0] == "extract"]) == 3  # one pass per (model, dataset)
    module.write_text(source)
    assert planned_jobs(workdir) == set()

    write_config(workdir, changed_targets(config, faces_layers=["features.18", "features.13"]))
    plan = planned_jobs(workdir)
    assert ("extract", faces_pass) in plan and ("extract_store", faces_store) in plan  # the pass re-runs whole
    assert ("extract_store", faces_store.replace("features.18", "features.13")) in plan
    assert ("extract", "model=mobilenet_v2_imagenet, dataset=scenes") not in plan
    write_config(workdir, config)


def changed_targets(config, faces_layers):
    """The config with the faces images' pass asked for `faces_layers` (a second target for that dataset)."""
    changed = json.loads(json.dumps(config))
    changed["extraction"]["targets"].append(
        {"model": "mobilenet_v2_imagenet", "datasets": ["faces"], "layers": faces_layers}
    )
    return changed


def test_a_run_moved_with_its_repository_plans_nothing(tmp_path, data_dir):
    """Paths in rule inputs and params are relative to the working directory (data_dir as configured), so a
    results folder moved with its repository (`cp -a`, then the original removed) is still up to date."""
    first = copy_workflow(tmp_path / "a" / "repo")
    config = disable_studies(tiny_config(data_dir))
    config["data_dir"] = os.path.relpath(data_dir, first)  # the default ../shared/data is relative too
    config["extraction"]["targets"] = [{"model": "resnet20_cifar", "datasets": ["objects"], "layers": ["layer3"]}]
    write_config(first, config)
    targets = [
        "results/activations/resnet20_cifar/objects/layer3.zarr",
        "results/models/mobilenet_v2_imagenet/card.json",
    ]
    snakemake(first, *targets)
    moved = tmp_path / "b" / "repo"
    shutil.copytree(first, moved, symlinks=True)  # keeps modification times, as `cp -a` or rsync -a do
    shutil.rmtree(first)
    result = snakemake(moved, "-n", *targets)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


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
