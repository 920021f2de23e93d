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
    """The workflow run locally to `report` on the tiny config, in a temporary copy of the repository.

    Returns (workdir, config). Shared by the workflow, failure and SLURM tests (which compare against it).
    """
    from wfutil import copy_face_images, copy_workflow, disable_studies, snakemake, tiny_config, write_config

    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = disable_studies(tiny_config(DATA_DIR))
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


# The test modules that read the all-studies run (`tiny_studies_run`): a parallel run keeps them on one worker.
STUDIES_RUN_MODULES = (
    "tests/studies/faces/test_faces_workflow.py",
    "tests/studies/actmax/test_actmax_workflow.py",
    "tests/studies/nefesi/test_nefesi_workflow.py",
    "tests/studies/dissection/test_dissection_workflow.py",
    "tests/report/test_browser.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """For a parallel run (`pytest -n N`, as `make test` does): whole test modules go to a worker (its module
    fixtures are built once), and the modules of `STUDIES_RUN_MODULES` go together (the all-studies run is built
    once). A worker builds a session run it needs (`tiny_local_run`) once."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tiny_studies_run" if module in STUDIES_RUN_MODULES else module

    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    """Every module that reads the all-studies run is listed in STUDIES_RUN_MODULES (else a parallel run would
    build that run once more on another worker)."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if "tiny_studies_run" in getattr(item, "fixturenames", ()) and module not in STUDIES_RUN_MODULES:
            raise pytest.UsageError(
                f"{module} uses tiny_studies_run: add it to STUDIES_RUN_MODULES in tests/conftest.py"
            )
