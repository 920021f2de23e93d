"""Config validation: the JSON schema in config/schema.yaml, with defaults filled in.

Errors are one line that names the config key and what was expected, so a typo in a YAML file
is found without reading a traceback.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml

from unitscope.errors import UnitscopeError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
# Each study's settings are described in config/schemas/<study>.schema.yaml (top-level key <study>).
STUDY_SCHEMAS = SCHEMA_PATH.parent / "schemas"


class ConfigError(UnitscopeError, ValueError):
    """The configuration does not match the schema; the message is one line."""


def _with_defaults(validator_class):
    """A validator class that fills `default` values of object properties while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties_with_defaults})


def _key(path) -> str:
    parts = [str(part) if not isinstance(part, int) else f"[{part}]" for part in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


# keys that moved: (where, key) -> where they live now
MOVED = {("nefesi", "label_names"): "datasets.<dataset>.label_names (a list per dataset)"}


def _unknown_keys(error: jsonschema.ValidationError) -> str:
    """'unknown key source.lable_column; did you mean label_column?' (allowed keys listed when no close match)."""
    allowed = sorted(error.schema.get("properties", {}))
    extra = sorted(set(error.instance) - set(allowed))
    where = _key(error.absolute_path)
    moved = [key for key in extra if (where, key) in MOVED]
    if moved:
        return f"config key {where}.{moved[0]}: moved to {MOVED[(where, moved[0])]}"
    names = ", ".join(repr(key) for key in extra)
    close = difflib.get_close_matches(str(extra[0]), allowed, n=1) if extra else []
    hint = f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(allowed)})"
    return f"config key {where}: unknown key {names}{hint}"


def _describe(error: jsonschema.ValidationError) -> str:
    """One readable line for the most specific error."""
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        return _unknown_keys(error)
    if error.validator == "required":
        return f"config key {key}: {error.message}"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"config key {key}: expected {expected}, got {error.instance!r}"
    if error.validator == "enum":
        allowed = [str(value) for value in error.validator_value]
        close = difflib.get_close_matches(str(error.instance), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"config key {key}: {error.instance!r} is not one of {', '.join(allowed)}{hint}"
    if error.validator == "pattern" and "examples" in error.schema:
        close = difflib.get_close_matches(str(error.instance), error.schema["examples"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"config key {key}: {error.instance!r} is not valid{hint} ({error.schema['description']})"
    if error.validator == "pattern" and "description" in error.schema:
        return f"config key {key}: {error.instance!r} is not valid ({error.schema['description']})"
    return f"config key {key}: {error.message}"


def dataset_label_names(config: Mapping, datasets) -> dict[str, list[str]]:
    """{dataset: the names of its integer labels} for those of `datasets` whose config lists them
    (datasets.<d>.label_names)."""
    named = {d: config["datasets"][d].get("label_names") for d in datasets}
    return {dataset: list(names) for dataset, names in named.items() if names}


def load_schema(path: str | os.PathLike = SCHEMA_PATH) -> dict:
    """The main schema plus every study's schema (config/schemas/<study>.schema.yaml) as a top-level key."""
    # the repository's own files, read by every dry run and cluster job: libyaml's parser where it is installed
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as handle:
        schema = yaml.load(handle, Loader=loader)
    for study_file in sorted((Path(path).parent / "schemas").glob("*.schema.yaml")):
        with open(study_file) as handle:
            schema["properties"][study_file.name.removesuffix(".schema.yaml")] = yaml.load(handle, Loader=loader)
    return schema


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate `config` in place (defaults filled) and return it; raise ConfigError on the first problem."""
    schema = load_schema() if schema is None else schema
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_describe(errors[0]))
    _check_references(config)
    _check_preprocessing(config)
    return config


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _source_prescribes(model: dict) -> bool:
    """Whether the entry's source has its own preprocessing (torchvision weights' transforms, timm's config)."""
    return model["arch"].startswith("timm.") or (model["arch"].startswith("torchvision.") and bool(model["weights"]))


def _check_preprocessing(config: dict) -> None:
    """Checks of `preprocessing` the schema cannot express, each naming the model: present unless the source gives
    one, a crop that fits the resized image (else it pads with black), one mean and std per input channel."""
    for name, model in config["models"].items():
        steps = model["preprocessing"]
        where = f"config key models.{name}.preprocessing"
        if steps is None:
            if not _source_prescribes(model):
                raise ConfigError(
                    f"{where}: not set, and arch {model['arch']} has no preprocessing of its own; "
                    "give resize, crop, mean and std"
                )
            continue
        resize = steps["resize"]
        crop = _pair(steps["crop"])
        limit = (resize, resize) if isinstance(resize, int) else _pair(resize)
        if crop[0] > limit[0] or crop[1] > limit[1]:
            raise ConfigError(
                f"{where}.crop: {steps['crop']} is larger than resize ({resize}); expected crop <= resize "
                "(the crop would pad the image with black)"
            )
        if len(steps["std"]) != len(steps["mean"]):
            raise ConfigError(
                f"{where}.std: {len(steps['std'])} values for {len(steps['mean'])} means; expected one per channel"
            )
        if model.get("in_channels") and model["in_channels"] != len(steps["mean"]):
            raise ConfigError(
                f"{where}.mean: {len(steps['mean'])} values, but models.{name}.in_channels is {model['in_channels']}"
            )


def _check_references(config: dict) -> None:
    """Cross-references the schema cannot express: targets name known models and datasets."""
    for index, target in enumerate(config.get("extraction", {}).get("targets", [])):
        where = f"config key extraction.targets[{index}]"
        if target["model"] not in config["models"]:
            raise ConfigError(
                f"{where}.model: unknown model {target['model']!r} (models: {', '.join(config['models'])})"
            )
        if not config["models"][target["model"]].get("enabled", True):
            raise ConfigError(
                f"{where}.model: model {target['model']!r} is disabled (models.{target['model']}.enabled)"
            )
        for dataset in target["datasets"]:
            if dataset not in config["datasets"]:
                raise ConfigError(
                    f"{where}.datasets: unknown dataset {dataset!r} (datasets: {', '.join(config['datasets'])})"
                )
    for name, model in config["models"].items():
        evaluation = model.get("eval")
        if evaluation and evaluation["dataset"] not in config["datasets"]:
            raise ConfigError(f"config key models.{name}.eval.dataset: unknown dataset {evaluation['dataset']!r}")


def check_paths(config: dict) -> None:
    """Fail fast, before any job, when a configured folder or checkpoint is not where the config says."""
    data_dir = Path(config["data_dir"])
    for name, dataset in config["datasets"].items():
        source = dataset["source"]
        if source["kind"] == "folder":
            root = Path(source["root"]) if Path(source["root"]).is_absolute() else data_dir / source["root"]
            if not root.is_dir():
                raise ConfigError(f"config key datasets.{name}.source.root: folder {root} does not exist")
    for name, model in config["models"].items():
        if model.get("enabled", True) and model.get("checkpoint"):
            path = Path(model["checkpoint"])
            path = path if path.is_absolute() else data_dir / path
            if not path.is_file():
                raise ConfigError(f"config key models.{name}.checkpoint: file {path} does not exist")


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from `path`; a syntax error is one line with its line and column."""
    try:
        with open(path) as handle:
            loaded = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ConfigError(f"{path}: {where}not valid YAML: {detail}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top, got {type(loaded).__name__}")
    return loaded or {}


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config file and validate it."""
    return validate_config(read_yaml(path))
