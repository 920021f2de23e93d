"""What the workflow must know about a model before running anything: its preprocessing (the entry's, or the one its
weights prescribe) and its layers (`unitscope.models.graph`: names, output shapes, the default last block and probe
depths). Asked at parse time, where torch must not be imported, so:

- `model_facts(config, name)` reads them from `<resources_dir>/model_facts/<name>-<key>.json`, keyed by everything
  that shapes the graph (arch, kwargs, preprocessing, the user's module file, package versions); when the file is
  missing or unreadable it runs `python -m unitscope facts` once in a subprocess and writes the file (temp, then
  rename). The architecture is built with random weights: no checkpoint is read for this.
- The cache is treated as hostile: a file whose key, model or fields do not check out is recomputed, never trusted.
- `compute_facts(name, spec)` is what that subprocess runs (it imports torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from unitscope.errors import one_line
from unitscope.models.errors import ModelError

__all__ = ["FACTS_VERSION", "compute_facts", "facts_key", "model_facts", "resolve_preprocessing"]

FACTS_VERSION = 1
GRAPH_KEYS = ("arch", "kwargs", "in_channels", "preprocessing", "weights", "python_path")
FIELDS = {"key": str, "model": str, "preprocessing": dict, "input": list, "layers": list, "probe_layers": list}
_MEMORY: dict[str, dict] = {}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def facts_key(name: str, spec: Mapping) -> str:
    """sha256 of what decides the graph and the preprocessing (not the weights' values)."""
    material = {key: spec.get(key) for key in GRAPH_KEYS}
    material["version"] = FACTS_VERSION
    material["packages"] = {p: _version(p) for p in ("torch", "torchvision", "timm")}
    if str(spec.get("arch", "")).startswith("python:"):
        from unitscope.models.python_source import python_module_file

        path = python_module_file(name, spec)
        material["module_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _valid(facts, name: str, key: str) -> bool:
    if not isinstance(facts, dict) or facts.get("key") != key or facts.get("model") != name:
        return False
    if not all(isinstance(facts.get(field), kind) for field, kind in FIELDS.items()):
        return False
    return all(isinstance(row, dict) and isinstance(row.get("name"), str) for row in facts["layers"])


def _read(path: Path, name: str, key: str) -> dict | None:
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return facts if _valid(facts, name, key) else None


def _write(path: Path, facts: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(facts, indent=1))
    os.replace(temp, path)


def _run_subprocess(name: str, spec: Mapping) -> dict:
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "unitscope", "facts", name, "--spec", json.dumps(dict(spec), default=str)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ModelError(lines[-1].removeprefix("unitscope: ") if lines else f"model {name}: the layer survey failed")
    return json.loads(done.stdout)


def model_facts(config: Mapping, name: str) -> dict:
    """The facts of model `name` (see the module docstring), from the cache or computed once."""
    spec = config["models"][name]
    key = facts_key(name, spec)
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(config.get("resources_dir", "resources")) / "model_facts" / f"{name}-{key[:16]}.json"
    facts = _read(path, name, key)
    if facts is None:
        print(f"unitscope: finding the layers of model {name} (once; cached in {path})", file=sys.stderr, flush=True)
        facts = _run_subprocess(name, spec)
        if not _valid(facts, name, key):
            raise ModelError(f"model {name}: the layer survey returned malformed facts")
        _write(path, facts)
    _MEMORY[key] = facts
    return facts


def resolve_preprocessing(config: dict) -> None:
    """Fill `preprocessing` of every enabled model that has none from its source (torchvision weights, timm)."""
    for name, spec in config["models"].items():
        if spec.get("enabled", True) and not spec.get("preprocessing"):
            spec["preprocessing"] = model_facts(config, name)["preprocessing"]


def compute_facts(name: str, spec: Mapping) -> dict:
    """Build the architecture (random weights), resolve its preprocessing and survey its layers."""
    from unitscope.models.graph import last_block, layer_table, probe_depths, record_layers
    from unitscope.models.preprocessing import input_channels, input_size
    from unitscope.models.sources import build_architecture, source_preprocessing

    preprocessing = spec.get("preprocessing") or source_preprocessing(name, spec)
    if not preprocessing:
        raise ModelError(
            f"model {name}: models.{name}.preprocessing is not set and arch {spec.get('arch')} prescribes none; "
            "give resize, crop, mean and std"
        )
    model = build_architecture(name, spec).eval()
    shape = (input_channels(preprocessing), *input_size(preprocessing))
    try:
        records = record_layers(model, shape)
    except Exception as err:
        raise ModelError(
            f"model {name}: a forward pass of one {list(shape)} input failed ({type(err).__name__}: "
            f"{one_line(err, 150)}); check models.{name}.preprocessing (crop, mean) against the model's input"
        ) from None
    return {
        "key": facts_key(name, spec),
        "model": name,
        "preprocessing": dict(preprocessing),
        "input": list(shape),
        "layers": layer_table(records),
        "last_block": last_block(records),
        "probe_layers": probe_depths(records),
    }
