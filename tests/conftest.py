"""Shared fixtures: the real data in ../shared/data and small configs built from it."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO.parent / "shared" / "data").resolve()
sys.path.insert(0, str(REPO / "src"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's small-tensor work on one torch thread (as fast, and no fight for a shared machine's cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium for a module's report checks (installed if missing; the test is skipped if it can't be)."""
    from browser import headless_chromium

    with headless_chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"the shared data folder {DATA_DIR} is missing (see README: data_dir)")
    return DATA_DIR


@pytest.fixture
def default_config() -> dict:
    with open(REPO / "config" / "config.yaml") as handle:
        return copy.deepcopy(yaml.safe_load(handle))


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory):
    """The workflow run locally to `report` on the tiny config, in a temporary copy of the repository, with the
    studies off and a one-shard atlas of ResNet-20 layer3 (its evidence jobs are what the SLURM test compares byte
    for byte).

    Returns (workdir, config). Shared by the workflow, failure and SLURM tests (which compare against it).
    """
    from wfutil import copy_face_images, copy_workflow, disable_studies, snakemake, tiny_config, write_config

    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = disable_studies(tiny_config(DATA_DIR))
    config["atlas"] = {
        "enabled": True,
        "targets": [{"model": "resnet20_cifar", "layer": "layer3", "datasets": ["objects"]}],
        "n_bootstrap": 200,
        "top_n": 10,
        "exemplars_shown": 4,
    }
    # faces come from a writable copy, so re-run tests can change a file in a dataset folder
    config["datasets"]["faces"]["source"]["root"] = str(copy_face_images(workdir / "data" / "faces", DATA_DIR))
    write_config(workdir, config)
    snakemake(workdir, "report")
    return workdir, config


@pytest.fixture(scope="session")
def tiny_studies_run(tmp_path_factory):
    """The tiny config with all four studies on (few control draws, seeds and steps), run to `report` once: one
    report with every study's card and section, shared by the study workflow tests and the browser tests (listed in
    STUDIES_RUN_MODULES, so a parallel run builds it once). Returns (workdir, config).

    Tests that change the config write it back when they are done (they only plan with a changed config)."""
    from wfutil import all_studies_config, copy_workflow, snakemake, write_config

    workdir = copy_workflow(tmp_path_factory.mktemp("studies_workflow"))
    config = all_studies_config(DATA_DIR)
    write_config(workdir, config)
    snakemake(workdir, "report")
    return workdir, config


# Test modules that share a session run are kept on one worker by a parallel run (`pytest -n N`), so the run is
# built once: the all-studies run (`tiny_studies_run`) and the tiny local run (`tiny_local_run`).
STUDIES_RUN_MODULES = (
    "tests/studies/faces/test_faces_workflow.py",
    "tests/studies/actmax/test_actmax_workflow.py",
    "tests/studies/nefesi/test_nefesi_workflow.py",
    "tests/studies/dissection/test_dissection_workflow.py",
    "tests/studies/lesions/test_lesions_workflow.py",
    "tests/report/test_browser.py",
)
LOCAL_RUN_MODULES = ("tests/test_workflow.py", "tests/test_failures.py", "tests/test_slurm.py")
SHARED_RUNS = {"tiny_studies_run": STUDIES_RUN_MODULES, "tiny_local_run": LOCAL_RUN_MODULES}
# Seconds each scope (a shared run's modules, or one module) took on 2 workers of this 2-core machine (2026-12-02,
# tests/ --junitxml): a parallel run starts the longest first, so no long one is left to run alone at the end.
# Only the order matters; a scope not listed runs after these, larger ones (more tests) first.
SCOPE_SECONDS = {
    "tiny_studies_run": 1100,
    "tiny_local_run": 1030,
    "tests/test_own_models_workflow.py": 270,
    "tests/studies/faces/test_faces_other_model_workflow.py": 170,
    "tests/data/test_hostile_datasets.py": 100,
    "tests/studies/faces/test_faces.py": 75,
    "tests/studies/atlas/test_atlas_workflow.py": 70,
    "tests/test_architecture_doc.py": 67,
    "tests/models/test_models.py": 63,
    "tests/test_any_model.py": 45,
    "tests/studies/faces/test_faces_finding.py": 43,
    "tests/models/test_sources.py": 40,
    "tests/data/test_downloads_workflow.py": 36,
    "tests/studies/lesions/test_class_units.py": 25,
}


def scope_of(nodeid: str) -> str:
    """The unit a parallel run hands to one worker: a shared run's name for its modules, else the module."""
    module = nodeid.split("::", 1)[0]
    return next((run for run, modules in SHARED_RUNS.items() if module in modules), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """For a parallel run (`pytest -n N`, as `make test` does): whole test modules go to a worker (its module
    fixtures are built once), the modules of a shared run go together (the run is built once), and scopes are
    handed out in the order `pytest_collection_modifyitems` leaves them (longest first), not by test count."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    config.option.loadscopereorder = False
    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    """Every module that reads a shared run is listed with it in SHARED_RUNS (else a parallel run would build that
    run once more on another worker); the scopes are ordered longest first (SCOPE_SECONDS), then by test count."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        for run, modules in SHARED_RUNS.items():
            if run in getattr(item, "fixturenames", ()) and module not in modules:
                raise pytest.UsageError(f"{module} uses {run}: add it to SHARED_RUNS in tests/conftest.py")
    counts: dict[str, int] = {}
    for item in items:
        counts[scope_of(item.nodeid)] = counts.get(scope_of(item.nodeid), 0) + 1
    order = {scope: position for position, scope in enumerate(counts)}

    def weight(item) -> tuple:
        scope = scope_of(item.nodeid)
        return (-SCOPE_SECONDS.get(scope, 0), -counts[scope], order[scope])

    items.sort(key=weight)  # stable: tests keep their order inside a scope
