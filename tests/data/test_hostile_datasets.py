"""A dataset folder is hostile: the workflow reads only what its labels CSV names inside it, and bad files are
excluded with their reason instead of stopping or exhausting the run (see tests/hostile.py for the folder)."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from hostile import EXPECTED_REASONS, FACES_SOURCE, GOOD, make_hostile_folder
from wfutil import copy_workflow, disable_studies, planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.integration
MANIFEST = "results/data/faces/manifest.parquet"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, data_dir):
    """The manifest of the hostile folder, built by Snakemake from a copy of the workflow."""
    workdir = copy_workflow(tmp_path_factory.mktemp("hostile"))
    root = make_hostile_folder(workdir.parent / "data", data_dir)
    config = disable_studies(tiny_config(data_dir))
    config["datasets"]["faces"] = {"category": "face", "size": 100, "source": {**FACES_SOURCE, "root": str(root)}}
    write_config(workdir, config)
    result = snakemake(workdir, MANIFEST)
    return workdir, root, result


def test_hostile_folder_builds_a_manifest_with_reasons(hostile_run):
    workdir, root, _ = hostile_run
    manifest = pd.read_parquet(workdir / MANIFEST)
    reasons = dict(zip(manifest["image_id"], manifest["exclude_reason"], strict=True))
    for name, expected in EXPECTED_REASONS.items():
        assert reasons.pop(f"faces/images/{name}").startswith(expected), name
    [absolute] = [image for image in reasons if image.endswith("/secret.jpg")]
    assert reasons.pop(absolute).startswith("absolute path in the labels CSV")
    assert set(reasons.values()) == {""} and len(reasons) == GOOD + 1  # the symlink inside the folder is fine
    assert manifest["image_id"].is_unique  # the duplicated row was dropped
    log = (workdir / "logs" / "data" / "faces.log").read_text()
    assert "1 duplicate rows of" in log and "excluded" in log and "bomb.png: image too large to decode" in log


def test_only_listed_images_are_inputs(hostile_run):
    workdir, root, _ = hostile_run
    assert planned_jobs_for(workdir) == set()
    (root / "images" / "unlisted.jpg").write_bytes(b"a stray file")
    (root.parent / "secret.jpg").write_bytes(b"outside the folder")
    assert planned_jobs_for(workdir) == set(), "files the CSV does not name (or outside the folder) re-run nothing"
    listed = next(path for path in sorted((root / "images").iterdir()) if path.name.endswith(".chip.jpg"))
    original = listed.read_bytes()
    listed.write_bytes(original[:-1] + b"\0")
    try:
        assert planned_jobs_for(workdir) == {("manifest", "dataset=faces")}
    finally:
        listed.write_bytes(original)


def test_an_odd_listed_name_is_tracked_and_read(tmp_path, data_dir):
    """An image named with Snakemake's wildcard syntax cannot be an input; it is still read and its change re-runs."""
    workdir = copy_workflow(tmp_path / "wf")
    root = make_hostile_folder(tmp_path / "data", data_dir)
    labels = pd.read_csv(root / "labels.csv").head(GOOD)
    odd = root / "images" / "{face}.jpg"
    odd.write_bytes((root / "images" / labels["filename"].iloc[0]).read_bytes())
    pd.concat([labels, pd.DataFrame({"filename": [odd.name], "gender": [1]})]).to_csv(root / "labels.csv", index=False)
    config = disable_studies(tiny_config(data_dir))
    config["datasets"]["faces"] = {"category": "face", "size": 100, "source": {**FACES_SOURCE, "root": str(root)}}
    write_config(workdir, config)
    snakemake(workdir, MANIFEST)
    manifest = pd.read_parquet(workdir / MANIFEST)
    assert manifest.set_index("image_id").loc["faces/images/{face}.jpg", "included"]
    assert planned_jobs_for(workdir) == set()
    os.utime(odd, ns=(odd.stat().st_atime_ns, odd.stat().st_mtime_ns + 10**9))
    assert planned_jobs_for(workdir) == {("manifest", "dataset=faces")}


def planned_jobs_for(workdir):
    """Jobs a dry run of the manifest target plans."""
    return planned_jobs(workdir, MANIFEST)
