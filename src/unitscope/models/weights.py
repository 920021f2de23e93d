"""Weight files, read once and checked before anything unpickles them.

- `torchvision.<arch>` with `weights`: the file is the local `checkpoint`, else
  `<torch_home>/hub/checkpoints/<file>` (a shared cache anyone may have written; downloaded there first
  when missing). torchvision unpickles it with `weights_only=False` and checks no hash of a cached file,
  so its bytes are read once and checked (a `weights_only=True` read unless `trusted`, the registry's
  sha256, torchvision's hash prefix in the file name), then torchvision gets exactly those bytes in a
  private hub dir.
- Local architectures (and `torchvision.<arch>` with only a checkpoint): the checkpoint is read with
  `torch.load(weights_only=True)` unless the entry is `trusted`, unwrapped ({'state_dict': ...},
  `module.` / `_orig_mod.` prefixes) and matched key by key and shape by shape against the architecture.

Every problem is a `ModelError` with a one-line message naming the model and the file or key.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from unitscope.data.manifest import resolve
from unitscope.errors import one_line
from unitscope.models.errors import ModelError

# State-dict entries a checkpoint may lack: BatchNorm's counter (not saved by old torch) and
# TopoNet's fixed blur kernel (a constant the architecture recreates).
OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked", "blur_filter")
STRIP_PREFIXES = ("module.", "_orig_mod.")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
SHOW = 3  # mismatches listed per kind in an error message


def _shape(shape) -> str:
    return "[" + ",".join(str(int(s)) for s in shape) + "]"


def first_few(items: list[str], n: int = SHOW) -> str:
    head = ", ".join(items[:n])
    return head + (f", … ({len(items)} in all)" if len(items) > n else "")


# ----------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_path(name: str, spec: Mapping, data_dir, *, required: bool) -> Path | None:
    value = spec.get("checkpoint")
    if not value:
        if required and str(spec.get("arch")).startswith("torchvision."):
            raise ModelError(
                f"model {name}: arch {spec.get('arch')} needs models.{name}.weights (a torchvision weights name) "
                f"or models.{name}.checkpoint"
            )
        if required:
            raise ModelError(
                f"model {name}: models.{name}.checkpoint is not set; arch {spec.get('arch')} needs a checkpoint file"
            )
        return None
    path = resolve(value, data_dir)
    if not path.is_file():
        raise ModelError(f"model {name}: models.{name}.checkpoint: file {path} does not exist")
    return path.resolve()


def _read_bytes(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelError(
            f"model {name}: cannot read checkpoint {path} ({type(err).__name__}: {err.strerror or err})"
        ) from None


def _check_sha256(name: str, spec: Mapping, path: Path, data: bytes) -> dict:
    """The card entry {path, sha256, bytes} of `path`'s bytes `data`; a mismatch with `models.<name>.sha256`
    is a ModelError.

    Callers read a file's bytes once, then check and load those bytes, never the file again: a file replaced
    after the check is never loaded.
    """
    actual = hashlib.sha256(data).hexdigest()
    expected = spec.get("sha256")
    if expected and actual != str(expected).lower():
        raise ModelError(
            f"model {name}: checkpoint {path} has sha256 {actual[:16]}…, but models.{name}.sha256 "
            f"expects {str(expected).lower()[:16]}… (wrong or corrupted file)"
        )
    return {"path": str(path), "sha256": actual, "bytes": len(data)}


def _read_safetensors(name: str, path: Path, data: bytes) -> dict:
    """A .safetensors file (timm's and Hugging Face's format): tensors only, nothing to unpickle."""
    try:
        from safetensors.torch import load
    except ImportError:
        raise ModelError(f"model {name}: checkpoint {path} is a .safetensors file; pip install safetensors") from None
    try:
        return load(data)
    except Exception as err:
        raise ModelError(
            f"model {name}: cannot read checkpoint {path} as safetensors ({type(err).__name__}: {one_line(err, 150)})"
        ) from None


def _read_checkpoint(name: str, path: Path, data: bytes, *, trusted: bool):
    """torch.load of `path`'s bytes `data` on CPU; weights_only=True unless trusted (a .safetensors file is read
    as such). Unreadable files become ModelErrors."""
    if path.suffix == ".safetensors":
        return _read_safetensors(name, path, data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:  # a real pickle of some class: only a full (unsafe) unpickle can read it
            raise ModelError(
                f"model {name}: checkpoint {path} is refused by safe loading (weights_only=True): it pickles "
                f"{found.group(1)}; set models.{name}.trusted: true only if you trust this file"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
        how = "" if trusted else "; read with weights_only=True"
        raise ModelError(
            f"model {name}: cannot read checkpoint {path} as a torch file "
            f"(UnpicklingError: {one_line(detail.group(1) if detail else text, 150)}{how})"
        ) from None
    except Exception as err:  # truncated, not a torch file, wrong device...: one line, not a traceback
        raise ModelError(
            f"model {name}: cannot read checkpoint {path} as a torch file "
            f"({type(err).__name__}: {one_line(err, 150) or 'no detail'})"
        ) from None


def _state_dict(name: str, path: Path, obj) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint object into a flat {key: tensor} with DataParallel/compile prefixes stripped."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"model {name}: checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(
            f"model {name}: checkpoint {path} is not a state_dict: entries {first_few(not_tensors)} are not tensors"
        )
    state = {}
    for key, value in obj.items():
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        state[key] = value
    return state


def _load_into(name: str, arch: str, model: nn.Module, path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model` after checking every key and shape; mismatches are one ModelError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_KEY_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"shape {k} {_shape(expected[k].shape)} vs checkpoint {_shape(state[k].shape)}"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {first_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {first_few(unexpected)}")
    if shapes:
        problems.append(
            "; ".join(shapes[:SHOW]) + (f"; … ({len(shapes)} shape mismatches)" if len(shapes) > SHOW else "")
        )
    if problems:
        raise ModelError(f"model {name}: checkpoint {path} does not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=False)


def load_checkpoint(name: str, spec: Mapping, arch: str, model: nn.Module, path: Path) -> dict:
    """Check and load `path` into `model`; returns the card entry of the bytes loaded."""
    data = _read_bytes(name, path)
    info = _check_sha256(name, spec, path, data)
    obj = _read_checkpoint(name, path, data, trusted=bool(spec.get("trusted")))
    _load_into(name, arch, model, path, _state_dict(name, path, obj))
    return info


# ----------------------------------------------------------------------------------------------
# torchvision


def torchvision_weights(name: str, tv_arch: str, weights_name: str):
    import torchvision  # local: see sources.torchvision_builder

    try:
        enum = torchvision.models.get_model_weights(tv_arch)
    except (ValueError, KeyError):
        raise ModelError(f"model {name}: torchvision has no weights for arch {tv_arch!r}") from None
    key = str(weights_name).rsplit(".", 1)[-1]
    try:
        return enum[key]
    except KeyError:
        valid = ", ".join([*enum.__members__.keys()])
        raise ModelError(f"model {name}: models.{name}.weights {weights_name!r} is not one of {valid}") from None


@contextlib.contextmanager
def _torch_home(torch_home) -> Iterator[Path]:
    """Point TORCH_HOME and torch.hub's directory at `torch_home` (restored afterwards)."""
    if torch_home is None:
        yield Path(torch.hub.get_dir())
        return
    torch_home = Path(torch_home).resolve()
    previous_env = os.environ.get("TORCH_HOME")
    previous_dir = getattr(torch.hub, "_hub_dir", None)  # None means "derived from TORCH_HOME"
    os.environ["TORCH_HOME"] = str(torch_home)
    torch.hub.set_dir(str(torch_home / "hub"))
    try:
        yield torch_home / "hub"
    finally:
        if previous_env is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = previous_env
        torch.hub._hub_dir = previous_dir


def _weights_file(name: str, spec: Mapping, weights, cached: Path) -> Path:
    """torchvision's file in the (shared) hub cache, downloaded there first when missing.

    torch.hub writes a download under a temporary name and renames it into place only once its hash
    matches; the bytes are verified again when read, since the shared cache may change at any time.
    """
    if cached.is_file():
        return cached
    prefix = torch.hub.HASH_REGEX.search(cached.name)
    expected = str(spec.get("sha256") or "").lower() or (prefix.group(1) if prefix else None)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(cached), hash_prefix=expected)
    except Exception as err:
        raise ModelError(
            f"model {name}: cannot download {weights} from {weights.url} to {cached} "
            f"({type(err).__name__}: {one_line(err, 150)}); offline, set models.{name}.checkpoint "
            f"to a local copy of {cached.name}"
        ) from None
    return cached


def _verified_weights(name: str, spec: Mapping, weights, filename: str, path: Path) -> tuple[bytes, dict]:
    """`path`'s bytes (read once) and card entry, checked as torchvision's `weights` (file `filename`).

    Unless trusted, the bytes must pass a weights_only=True read, since torchvision unpickles them with
    weights_only=False (first, so that a planted file is reported by what it pickles). Trusted or not, the
    registry's sha256 and torchvision's hash prefix in `filename` must match.
    """
    data = _read_bytes(name, path)
    if not spec.get("trusted"):
        _state_dict(name, path, _read_checkpoint(name, path, data, trusted=False))
    info = _check_sha256(name, spec, path, data)
    prefix = torch.hub.HASH_REGEX.search(filename)
    if prefix and not info["sha256"].startswith(prefix.group(1)):
        raise ModelError(
            f"model {name}: checkpoint {path} is not torchvision's {weights} ({filename}): "
            f"its sha256 starts {info['sha256'][:8]}, torchvision expects {prefix.group(1)}"
        )
    return data, info


def _build_with_weights(name: str, builder, weights, filename: str, data: bytes) -> nn.Module:
    """torchvision's builder on exactly the verified `data`, staged in a private hub dir (removed afterwards)."""
    private = Path(tempfile.mkdtemp(prefix="unitscope-hub-"))  # mode 0700: nobody else can swap the file
    try:
        (private / "hub" / "checkpoints").mkdir(parents=True)
        (private / "hub" / "checkpoints" / filename).write_bytes(data)
        with _torch_home(private):
            return builder(weights=weights)
    except Exception as err:
        raise ModelError(
            f"model {name}: torchvision could not load {weights} ({type(err).__name__}: {one_line(err, 150)})"
        ) from None
    finally:
        shutil.rmtree(private, ignore_errors=True)


def build_torchvision(name: str, spec: Mapping, arch: str, data_dir, torch_home) -> tuple[nn.Module, dict]:
    """A torchvision model with its `weights` enum (the local checkpoint, or the hub cache's file) and the card
    entry of the bytes loaded. Entries without `weights` are built by `sources` and given their checkpoint."""
    from unitscope.models.sources import torchvision_builder

    tv_arch = arch.split(".", 1)[1]
    builder = torchvision_builder(name, tv_arch)
    checkpoint = checkpoint_path(name, spec, data_dir, required=False)
    weights = torchvision_weights(name, tv_arch, spec["weights"])
    filename = os.path.basename(urlparse(weights.url).path)
    if checkpoint is None:
        with _torch_home(torch_home) as hub_dir:
            checkpoint = _weights_file(name, spec, weights, hub_dir / "checkpoints" / filename)
    data, info = _verified_weights(name, spec, weights, filename, checkpoint)
    kwargs = dict(spec.get("kwargs") or {})
    return _build_with_weights(name, lambda weights: builder(weights=weights, **kwargs), weights, filename, data), info


# ----------------------------------------------------------------------------------------------
# timm


def timm_pretrained_name(spec: Mapping) -> str:
    """timm's name of the entry's pretrained weights: `<arch>` (`weights: pretrained`: timm's default tag) or
    `<arch>.<tag>` (`weights: a1_in1k`)."""
    arch = str(spec["arch"]).split(".", 1)[1]
    tag = str(spec.get("weights") or "pretrained")
    return arch if tag == "pretrained" else f"{arch}.{tag}"


def timm_weights_file(name: str, spec: Mapping, hub_cache) -> Path:
    """The safetensors file of timm's pretrained weights in the Hugging Face cache `hub_cache` (downloaded there
    when online and missing). The file is then read and checked like any checkpoint, never handed to timm's loader."""
    import timm
    from huggingface_hub import hf_hub_download

    pretrained = timm_pretrained_name(spec)
    config = timm.models.get_pretrained_cfg(pretrained)
    if config is None or not config.hf_hub_id:
        raise ModelError(f"model {name}: timm has no pretrained weights {pretrained!r} on the Hugging Face hub")
    repo, filename = config.hf_hub_id, "model.safetensors"
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=str(hub_cache) if hub_cache else None))
    except Exception as err:
        raise ModelError(
            f"model {name}: cannot get {repo}/{filename} from the Hugging Face hub or its cache {hub_cache} "
            f"({type(err).__name__}: {one_line(err, 150)}); offline, set models.{name}.checkpoint to a local copy"
        ) from None
