"""The tiny workflow through snakemake-executor-plugin-slurm on a real single-node SLURM cluster started here."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import DATA_DIR
from slurm_cluster import ClusterUnavailable, ensure_installed, job_states, slurm_cluster
from wfutil import REPO, SNAKEMAKE, copy_workflow, disable_studies, tiny_config, write_config

pytestmark = pytest.mark.integration


def test_profile_keys_are_commented():
    """Every key of the shipped SLURM profile carries a comment (README promises it)."""
    for line in (REPO / "profiles" / "slurm" / "config.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"uncommented profile line: {line!r}"


def test_profile_lets_the_user_choose_partition_and_requests_gpu_for_extraction():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["set-resources"]["extract"]["gpu"] == 1
    assert "slurm_partition" not in profile["default-resources"]  # left to the user (commented placeholder)


def test_the_slurm_profile_gives_its_own_threads_not_the_local_ones(tmp_path):
    """As the workflow profile, profiles/slurm replaces profiles/default: extraction jobs get the 8 threads their
    8-CPU allocation pays for, not the local profile's 2 (which `--profile` would let win)."""
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, disable_studies(tiny_config(DATA_DIR)))
    command = [SNAKEMAKE, "-n", "--cores", "16", "--workflow-profile", "profiles/slurm", "--executor", "local"]
    out = subprocess.run([*command, "report"], cwd=workdir, capture_output=True, text=True, timeout=300).stdout
    threads = {rule: int(n) for rule, n in re.findall(r"rule (\w+):(?:\n\s+[^\n]*?)*?\n\s+threads: (\d+)", out)}
    assert threads.get("extract") == 8 and threads.get("model_card") == 4, out[-2000:]


def cluster_profile(workdir) -> str:
    """The shipped SLURM profile, adapted to the test cluster: its partition, no GPU, 1 CPU per job, squeue polling."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update({"slurm_partition": "debug", "cpus_per_task": 1, "mem_mb": 1500, "runtime": 20})
    for rule, resources in profile["set-resources"].items():
        resources.pop("gpu", None)
        resources.update({"cpus_per_task": 1, "mem_mb": 3000 if rule == "extract" else 2000, "runtime": 20})
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    profile.update(
        {
            "jobs": 4,
            "latency-wait": 10,
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 5,
            "retries": 0,
        }
    )
    folder = workdir / "profiles" / "slurm-test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return str(folder)


def test_tiny_workflow_under_slurm_matches_local_run(tmp_path, tiny_local_run):
    local, config = tiny_local_run
    try:
        ensure_installed()
    except ClusterUnavailable as reason:
        pytest.skip(f"no SLURM here: {reason}")
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, config)
    with slurm_cluster(tmp_path / "slurm") as cluster:
        command = ["timeout", "-k", "10", "900", SNAKEMAKE, "--workflow-profile", cluster_profile(workdir), "report"]
        result = subprocess.run(command, cwd=workdir, env=cluster["env"], capture_output=True, text=True)
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        states = job_states(cluster["env"])

    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    job_ids = {match.group(1) for log in logs if (match := re.fullmatch(r"(\d+)\.log", log.name))}
    rules = {log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0] for log in logs}
    assert {"rule_manifest", "rule_extract", "rule_model_card", "rule_atlas_lesion", "rule_atlas_exemplars"} <= rules
    # the figures and the report are local rules: they run in the submitting process, not as SLURM jobs
    assert not rules & {"rule_report", "rule_figure_datasets", "rule_figure_activations", "rule_atlas_gather"}, rules
    assert (workdir / "results" / "report" / "index.html").is_file()
    expected = "3 manifests, 2 cards, 3 passes, 5 atlas jobs"
    assert len(job_ids) >= 13, f"expected a SLURM job per non-local job ({expected}): {logs}"
    assert all(states.get(job) == "COMPLETED" for job in job_ids), f"job states: {states}"

    for manifest in sorted((local / "results" / "data").glob("*/manifest.parquet")):
        twin = workdir / manifest.relative_to(local)
        pd.testing.assert_frame_equal(pd.read_parquet(twin), pd.read_parquet(manifest))
    stores = sorted((local / "results" / "activations").glob("*/*/*.zarr"))
    assert len(stores) == 3
    for store in stores:
        ours, theirs = (zarr.open_group(str(p), mode="r") for p in (workdir / store.relative_to(local), store))
        np.testing.assert_allclose(ours["means"][:], theirs["means"][:], rtol=1e-5, atol=1e-6)
        assert list(ours["image_id"][:]) == list(theirs["image_id"][:])
    # the atlas shard's evidence, computed in SLURM jobs, has the same bytes as the local run's
    shard_files = sorted((local / "results" / "atlas").glob("*/*/shards/*/*.*")) + sorted(
        (local / "results" / "atlas").glob("*/*/top_n.*")
    )
    kinds = {"categories.parquet", "lesion.parquet", "exemplars.npz", "top_n.json"}
    assert {path.name for path in shard_files} >= kinds
    for path in shard_files:
        assert (workdir / path.relative_to(local)).read_bytes() == path.read_bytes(), f"{path.name} differs under SLURM"
    summaries = [json.loads((root / "results" / "summary.json").read_text()) for root in (workdir, local)]
    for summary in summaries:
        summary.pop("generated")
    assert summaries[0]["datasets"] == summaries[1]["datasets"]
    assert summaries[0]["models"] == summaries[1]["models"]
    assert summaries[0]["extraction"].keys() == summaries[1]["extraction"].keys()
