# Shared setup: config validation (schema defaults filled in), paths, and input functions.
# No torch here: dry runs and cluster submissions must stay fast.
import functools
import os
import re
import sys
from pathlib import Path

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO / "src"))

from unitscope.codedeps import entry_closure, module_closure, use_cache_file  # noqa: E402
from unitscope.config import check_paths, read_yaml, validate_config  # noqa: E402
from unitscope.models.facts import resolve_preprocessing  # noqa: E402
from unitscope.models.python_source import python_module_file  # noqa: E402
from unitscope.settings import ModelRef  # noqa: E402
from unitscope.errors import UnitscopeError  # noqa: E402
from unitscope.data.manifest import listed_files, stat_fingerprint  # noqa: E402

CONFIG_FILE = "config/config.yaml"


def plan(step, *args, **kwargs):
    """Run a parse-time step (config checks, a study's job list): a UnitscopeError, which names the key or file
    at fault, stops the run as that one line. The one place where parse-time errors are caught."""
    try:
        return step(*args, **kwargs)
    except UnitscopeError as err:
        raise WorkflowError(f"unitscope: {err}") from None


plan(read_yaml, CONFIG_FILE)  # Snakemake's own message for a YAML error gives no line


configfile: CONFIG_FILE


plan(validate_config, config)
plan(check_paths, config)
plan(resolve_preprocessing, config)  # entries without preprocessing take their weights' (surveyed once, cached)

ENV = "../envs/unitscope.yaml"
WILDCARD_SYNTAX = re.compile(r"[{}]")
# Studies: each has rules/<study>.smk, config key <study> (schema in config/schemas/), and writes
# results/<study>/section.json for the report; a study added later (docs/architecture.md) follows the built-in ones.
BUILT_IN_STUDIES = ("faces", "actmax", "nefesi", "dissection", "lesions")
SCHEMA_STUDIES = sorted(path.name.removesuffix(".schema.yaml") for path in (REPO / "config/schemas").glob("*.schema.yaml"))
# Config blocks with a schema that write no report section (yet): the atlas, built by its own target (`snakemake atlas`).
NO_SECTION = ("atlas",)
STUDIES = BUILT_IN_STUDIES + tuple(name for name in SCHEMA_STUDIES if name not in BUILT_IN_STUDIES + NO_SECTION)
# Run settings that never change results: kept out of params so changing them re-runs nothing.
RUN_ONLY_SETTINGS = {
    "extraction": ("batch_size", "num_workers", "device", "maps_chunk_images"),
    "dissection": ("batch_size",),
    "nefesi": ("probe_batch_size",),
    "atlas": ("batch_size",),
}


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    model=r"[A-Za-z0-9_]+",
    layer=r"[^/]+",


# What each package module imports, by file content: later dry runs and cluster jobs skip parsing the sources.
use_cache_file(".snakemake/unitscope/codedeps.json")


def code(*modules):
    """Source files of the given unitscope modules (or `module:function` entry points: only what that function
    uses) and everything they import: rule inputs, relative to the working directory so that a run copied or
    moved with its repository plans nothing new."""
    return sorted({os.path.relpath(path) for module in modules for path in _closure(f"unitscope.{module}")})


def _closure(name):
    return entry_closure(name) if ":" in name else module_closure(name)


def data_dir():
    """`data_dir` as configured (relative to the working directory unless absolute): paths built from it stay
    valid, and unchanged, when the repository and its results move together."""
    return os.path.normpath(config["data_dir"])


def torch_home():
    return os.path.join(os.path.normpath(config["resources_dir"]), "torch")


def enabled_models():
    return [name for name, spec in config["models"].items() if spec["enabled"]]


def extraction_targets():
    """(model, dataset, layer, save_maps) for every configured extraction."""
    return [
        (target["model"], dataset, layer, target["save_maps"])
        for target in config["extraction"]["targets"]
        for dataset in target["datasets"]
        for layer in target["layers"]
    ]


# Stores that study rules need beyond extraction.targets; filled by request_extraction() at parse time.
STUDY_EXTRACTIONS = []


def request_extraction(model, dataset, layer, save_maps=False):
    """Declare that a study needs this store (and whether with full maps); returns its path for `input:`."""
    STUDY_EXTRACTIONS.append((model, dataset, layer, save_maps))
    return f"results/activations/{model}/{dataset}/{layer}.zarr"


def pass_layers(wildcards):
    """{layer: keep full maps} for the one forward pass of (model, dataset): every layer any target or study asks
    for, in network order as requested; maps kept when any request wants them."""
    layers = {}
    for model, dataset, layer, maps in extraction_targets() + STUDY_EXTRACTIONS:
        if (model, dataset) == (wildcards.model, wildcards.dataset):
            layers[layer] = layers.get(layer, False) or maps
    if not layers:
        raise WorkflowError(
            f"unitscope: no extraction target for {wildcards.model}/{wildcards.dataset} in config extraction.targets"
            " or any study"
        )
    return layers


def store_settings(wildcards):
    """What a published store holds (its layer's maps setting and the model), so a change re-publishes it."""
    layers = pass_layers(wildcards)
    if wildcards.layer not in layers:
        wanted = "/".join((wildcards.model, wildcards.dataset, wildcards.layer))
        raise WorkflowError(f"unitscope: no extraction target for {wanted} in config extraction.targets or any study")
    return {"save_maps": layers[wildcards.layer], "model": model_params(wildcards)}


def activation_stores():
    return [f"results/activations/{m}/{d}/{layer}.zarr" for m, d, layer, _ in extraction_targets()]


def activation_figures():
    return [f"results/report/figures/activations/{m}/{d}/{layer}.png" for m, d, layer, _ in extraction_targets()]


def enabled_studies():
    return [study for study in STUDIES if config.get(study, {}).get("enabled", False)]


def study_sections():
    return [f"results/{study}/section.json" for study in enabled_studies()]


def atlas_index():
    """The atlas's index when the atlas is on: the report lists its layers and links each unit page to it."""
    return ["results/atlas/index.json"] if config["atlas"]["enabled"] else []


@functools.cache
def listed_dataset_files(dataset):
    """The dataset's labels CSV and the images it names inside its folder (never a walk of the folder)."""
    return listed_files(dataset, config["datasets"][dataset]["source"], data_dir())


def dataset_files(wildcards):
    """Inputs of the manifest: a changed, added or removed listed image re-runs it. Snakemake reads `{` and `}`
    in a path as a wildcard, even escaped, so such names are tracked by `dataset_odd_names` instead."""
    return [path for path in listed_dataset_files(wildcards.dataset) if not WILDCARD_SYNTAX.search(path)]


def dataset_odd_names(wildcards):
    """Name, size and mtime of the listed images Snakemake cannot take as inputs (a param, so they re-run it too)."""
    odd = [path for path in listed_dataset_files(wildcards.dataset) if WILDCARD_SYNTAX.search(path)]
    return stat_fingerprint(odd) if odd else ""


def manifest_spec(wildcards):
    """The dataset's settings that decide its manifest (label names only name classes later: they re-run no draw)."""
    return {key: value for key, value in config["datasets"][wildcards.dataset].items() if key != "label_names"}


def manifest_path(dataset):
    return f"results/data/{dataset}/manifest.parquet"


def model_checkpoint(wildcards):
    """The model's files as inputs (so replacing one re-runs the model's stages): its checkpoint, and the module
    of a `python:` arch."""
    spec = config["models"][wildcards.model]
    files = []
    if spec["checkpoint"] is not None:
        path = Path(spec["checkpoint"])
        files.append(str(path if path.is_absolute() else Path(data_dir()) / path))
    if spec["arch"].startswith("python:"):
        module_file = plan(python_module_file, wildcards.model, spec)
        files += [os.path.relpath(module_file)] if module_file else []
    return files


def model_eval_manifest(wildcards):
    evaluation = config["models"][wildcards.model]["eval"]
    return [manifest_path(evaluation["dataset"])] if evaluation else []


def model_ref(name):
    """The `ModelRef` settings of model `name` as a params entry (a stage rebuilds it with `ModelRef.from_params`)."""
    return ModelRef.from_config(config, name).as_params()


def model_params(wildcards):
    """The model's registry entry minus `enabled` (which changes no result)."""
    return {k: v for k, v in config["models"][wildcards.model].items() if k != "enabled"}


def results_config():
    """The config minus run-only settings: what the report records as having produced the results."""
    settings = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    for section, keys in RUN_ONLY_SETTINGS.items():
        for key in keys:
            settings.get(section, {}).pop(key, None)
    return settings
