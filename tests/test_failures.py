"""Failures lose nothing: a run killed mid-extraction resumes to the same results; bad config is one clear line."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import zarr
from wfutil import SNAKEMAKE, copy_workflow, snakemake, write_config

from unitscope.fsutil import atomic_path

pytestmark = pytest.mark.integration


def test_sigkill_during_extraction_then_rerun_equals_uninterrupted_run(tmp_path, tiny_local_run):
    local, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, config)
    # the activation stores are the targets (what a kill can leave half-written); the report reads them unchanged
    stores = sorted(str(p.relative_to(local)) for p in (local / "results" / "activations").glob("*/*/*.zarr"))
    process = subprocess.Popen(
        [SNAKEMAKE, "--cores", "1", *stores],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    activations = workdir / "results" / "activations"
    deadline, partial = time.monotonic() + 300, []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            partial = list(activations.rglob(".*.pass.tmp-*")) if activations.exists() else []
            if partial:
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert partial, "the run ended before any extraction started writing; cannot test the kill"
    finished_before_kill = {p.name for p in activations.glob("*/*/*.zarr")}  # model/dataset/layer.zarr
    assert all(not name.startswith(".") for name in finished_before_kill)

    snakemake(workdir, "--unlock")
    snakemake(workdir, *stores)
    assert not list(activations.rglob(".*.tmp-*")), "a partial store from the killed run is still there"
    assert stores
    for store in stores:
        ours = zarr.open_group(str(workdir / store), mode="r")
        theirs = zarr.open_group(str(local / store), mode="r")
        np.testing.assert_array_equal(ours["means"][:], theirs["means"][:])
        assert list(ours["image_id"][:]) == list(theirs["image_id"][:])


def test_stale_temporary_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".out.zarr.tmp-deadbeef"
    (stale / "means").mkdir(parents=True)
    with atomic_path(tmp_path / "out.zarr") as temp:
        temp.mkdir()
        (temp / "zarr.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.update(extration={}), "config key <top level>: unknown key 'extration'"),
        (lambda c: c["datasets"]["faces"].update(size="many"), "config key datasets.faces.size: expected integer"),
        (lambda c: c["extraction"]["targets"][0].update(model="vgg99"), "unknown model 'vgg99'"),
        (
            lambda c: c["datasets"]["scenes"]["source"].update(
                lable_column=c["datasets"]["scenes"]["source"].pop("label_column")
            ),
            "config key datasets.scenes.source: unknown key 'lable_column'; did you mean 'label_column'?",
        ),
        (lambda c: c["extraction"].update(device="banana"), "config key extraction.device: 'banana' is not valid"),
        (
            lambda c: c["models"]["resnet20_cifar"]["preprocessing"].update(crop=48),
            "config key models.resnet20_cifar.preprocessing.crop: 48 is larger than resize (32)",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, tiny_local_run, change, expected):
    _, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    bad = copy.deepcopy(config)
    change(bad)
    write_config(workdir, bad)
    result = snakemake(workdir, "-n", "report", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def test_missing_data_folder_fails_before_any_job_with_one_line(tmp_path, tiny_local_run):
    _, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, {**config, "data_dir": str(tmp_path / "no-data")})
    result = snakemake(workdir, "report", check=False)
    output = result.stderr + result.stdout
    assert result.returncode != 0
    assert (
        f"config key datasets.scenes.source.root: folder {tmp_path / 'no-data'}/scenes_intel does not exist" in output
    )
    assert "Traceback" not in output
    assert not (workdir / "results").exists()


def test_unknown_layer_fails_its_extraction_job_with_one_line_and_no_store(tmp_path, tiny_local_run):
    _, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    targets = [{"model": "resnet20_cifar", "datasets": ["objects"], "layers": ["layer9"]}]
    write_config(workdir, {**config, "extraction": {**config["extraction"], "targets": targets}})
    result = snakemake(workdir, "results/activations/resnet20_cifar/objects/layer9.zarr", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in output.splitlines() if "model resnet20_cifar has no layer 'layer9'" in line]
    assert lines and "valid layers include" in lines[0] and "layer3" in lines[0]
    assert not (workdir / "results" / "activations" / "resnet20_cifar" / "objects").exists() or not list(
        (workdir / "results" / "activations" / "resnet20_cifar" / "objects").iterdir()
    )


def _checkpoint_case(tmp_path, kind: str) -> tuple[dict, str]:
    """resnet20_cifar's spec changes for one bad checkpoint, and the text its one-line error must contain."""
    from conftest import DATA_DIR

    r20, r56 = DATA_DIR / "checkpoints" / "resnet20-12fca82f.th", DATA_DIR / "checkpoints" / "resnet56-4bfd9763.th"
    if kind == "truncated":
        path = tmp_path / "resnet20-truncated.th"
        path.write_bytes(r20.read_bytes()[: r20.stat().st_size // 2])
        return {"checkpoint": str(path), "sha256": None}, f"cannot read checkpoint {path} as a torch file"
    if kind == "other architecture":
        return {"checkpoint": str(r56), "sha256": None}, f"checkpoint {r56} does not fit cifar_resnet20: "
    return {"sha256": "0" * 64}, "but models.resnet20_cifar.sha256 expects 0000000000000000… (wrong or corrupted file)"


@pytest.mark.parametrize("kind", ["truncated", "other architecture", "checksum mismatch"])
def test_bad_checkpoint_fails_its_job_with_one_line_and_writes_nothing(tmp_path, tiny_local_run, kind):
    _, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    change, expected = _checkpoint_case(tmp_path, kind)
    models = {**config["models"], "resnet20_cifar": {**config["models"]["resnet20_cifar"], **change}}
    write_config(workdir, {**config, "models": models})
    result = snakemake(workdir, "results/models/resnet20_cifar/card.json", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in output.splitlines() if expected in line]
    assert lines and all("ModelError: model resnet20_cifar: " in line for line in lines), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not (workdir / "results" / "models" / "resnet20_cifar").exists() or not list(
        (workdir / "results" / "models" / "resnet20_cifar").iterdir()
    )


def test_labels_csv_without_the_column_is_one_line_naming_key_and_file(tmp_path, tiny_local_run):
    _, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    datasets = {**config["datasets"]}
    datasets["scenes"] = {**datasets["scenes"], "source": {**datasets["scenes"]["source"], "label_column": "mood"}}
    write_config(workdir, {**config, "datasets": datasets})
    result = snakemake(workdir, "report", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in output.splitlines() if "datasets.scenes.source.label_column" in line]
    assert lines and all("'mood' not in" in line and "(columns: path, label)" in line for line in lines)
    assert not list((workdir / "results" / "data").glob("scenes/*")), "the failed manifest left a file behind"


def test_yaml_syntax_error_names_line_and_column(tmp_path, tiny_local_run):
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "config" / "config.yaml").write_text("data_dir: x\ndatasets: {faces: [1, 2}\nmodels: {}\n")
    result = snakemake(workdir, "-n", "report", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    expected = "config/config.yaml: line 2, column 24: not valid YAML: expected ',' or ']', but got '}'"
    assert [line for line in output.splitlines() if expected in line], output[-3000:]
    assert "Traceback" not in output


def test_cuda_without_a_gpu_is_one_line_naming_the_key(tmp_path, tiny_local_run):
    import torch

    _, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    absent = torch.cuda.device_count()  # an index past the last GPU: absent on any machine
    write_config(workdir, {**config, "extraction": {**config["extraction"], "device": f"cuda:{absent}"}})
    result = snakemake(workdir, "results/activations/resnet20_cifar/objects/layer3.zarr", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    expected = f"config key extraction.device: 'cuda:{absent}' was asked for, but torch sees "
    lines = [line for line in output.splitlines() if expected in line and "(use auto or cpu)" in line]
    assert len(lines) == 1 and "Traceback" not in output, output[-3000:]
    assert not (workdir / "results" / "activations").exists() or not list(
        (workdir / "results" / "activations").rglob("*.zarr")
    )


def test_full_disk_is_one_line_naming_the_artifact_and_leaves_nothing(tmp_path, tiny_local_run):
    """A real full filesystem: a 64 KiB tmpfs mounted where the activation stores go (needs root, as CI has).
    Skipped only where mounting is not permitted."""
    _, config = tiny_local_run
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, config)
    disk = workdir / "results" / "activations"
    disk.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = snakemake(workdir, "results/activations/resnet20_cifar/objects/layer3.zarr", check=False)
        left = [path for path in disk.rglob("*") if not path.is_dir()]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    extraction_pass = "results/activations/resnet20_cifar/objects.pass"  # the pass writes the stores first
    expected = f"DiskFullError: no space left on the device while writing {extraction_pass} ("
    assert len([line for line in output.splitlines() if line.startswith(expected)]) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert left == [], "a partial store was left on the full disk"
