"""torchvision weights from a shared (possibly hostile) hub cache or a local file are never unpickled unchecked.

torchvision's builder reads `<torch_home>/hub/checkpoints/<file>` with `weights_only=False` and checks no hash of
a file already there, so a pickle planted there would run code. unitscope verifies every weight file first.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import tempfile

import pytest
import torch
from conftest import DATA_DIR
from wfutil import copy_workflow, disable_studies, snakemake, tiny_config, write_config

from unitscope.models.card import model_card
from unitscope.models.errors import ModelError
from unitscope.models.registry import build_model

CKPT = DATA_DIR / "checkpoints"
FILE = "mobilenet_v2-b0353104.pth"
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
IMAGENET_PRE = {"resize": 232, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
FROM_CACHE = {
    "arch": "torchvision.mobilenet_v2",
    "weights": "IMAGENET1K_V1",
    "checkpoint": None,
    "sha256": None,
    "preprocessing": IMAGENET_PRE,
}

pytestmark = pytest.mark.skipif(not CKPT.is_dir(), reason=f"shared data not found at {DATA_DIR}")


class _Touch:
    """Unpickling this creates `marker`: it stands for any code a hostile pickle runs."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.PosixPath(self.marker),))


def plant(path: pathlib.Path, marker: pathlib.Path, protocol: int = 2) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_Touch(marker), path, pickle_protocol=protocol)
    return path


def cache_file(torch_home: pathlib.Path) -> pathlib.Path:
    return torch_home / "hub" / "checkpoints" / FILE


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder for the test (the private hub dirs land here), so their removal can be checked."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails the test: these models must build from files already here."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_workflow_refuses_a_pickle_planted_in_the_hub_cache(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = disable_studies(tiny_config(DATA_DIR))
    config["models"]["mnv2"] = FROM_CACHE
    write_config(workdir, config)  # resources_dir: default `resources`, relative to the workdir
    marker = tmp_path / "pwned"
    cached = plant(cache_file(workdir / "resources" / "torch"), marker)
    result = snakemake(workdir, "results/models/mnv2/card.json", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert not marker.exists(), "the planted pickle ran"
    # the job's one-line error, shown from its log, with no traceback
    lines = [line for line in output.splitlines() if line.startswith("ModelError: model mnv2: ")]
    assert len(lines) == 1 and "Traceback" not in output, output[-3000:]
    assert f"checkpoint {cached} is refused by safe loading (weights_only=True): it pickles getattr" in lines[0]
    assert "set models.mnv2.trusted: true only if you trust this file" in lines[0]
    assert not (workdir / "results" / "models" / "mnv2" / "card.json").exists()


def test_trusted_does_not_open_the_cache_to_a_file_that_is_not_torchvisions(tmp_path, offline):
    marker = tmp_path / "pwned"
    cached = plant(cache_file(tmp_path / "torch"), marker)
    with pytest.raises(ModelError, match="torchvision expects b0353104") as err:
        build_model("mnv2", dict(FROM_CACHE, trusted=True), data_dir=DATA_DIR, torch_home=tmp_path / "torch")
    assert str(cached) in str(err.value) and not marker.exists()


def test_trusted_means_a_full_unpickle_of_a_file_whose_hash_matches(tmp_path):
    """What `trusted: true` is for: the configured file (here pinned by sha256) is unpickled in full."""
    marker = tmp_path / "ran"
    path = plant(tmp_path / "full.th", marker)
    spec = {
        "arch": "cifar_resnet20",
        "checkpoint": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "preprocessing": IMAGENET_PRE,
    }
    with pytest.raises(ModelError, match="holds a NoneType, not a state_dict"):
        build_model("r20", dict(spec, trusted=True), data_dir=DATA_DIR, torch_home=None)
    assert marker.exists()


def test_valid_cached_weights_build_offline_like_the_local_checkpoint(tmp_path, private_tmp, offline, monkeypatch):
    torch_home = tmp_path / "torch"
    cached = cache_file(torch_home)
    cached.parent.mkdir(parents=True)
    shutil.copyfile(CKPT / FILE, cached)
    unpickled, load = [], torch.load

    def spy(f, *args, **kwargs):  # records what torchvision unpickles, then loads it as usual
        if kwargs.get("weights_only") is False:
            unpickled.append(pathlib.Path(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from_cache = build_model("mnv2", FROM_CACHE, data_dir=DATA_DIR, torch_home=torch_home)
    # torchvision read a private copy of the verified bytes, not the shared cache (which may change meanwhile)
    assert len(unpickled) == 1 and unpickled[0].parent.parent.parent.parent == private_tmp, unpickled
    monkeypatch.setattr(torch, "load", load)
    local = dict(FROM_CACHE, checkpoint=f"checkpoints/{FILE}", sha256=SHA256)
    from_local = build_model("mnv2", local, data_dir=DATA_DIR, torch_home=tmp_path / "unused")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(from_cache(x), from_local(x))
    card = model_card("mnv2", FROM_CACHE, from_cache)
    assert card["checkpoint"] == {"path": str(cached), "sha256": SHA256, "bytes": cached.stat().st_size}
    assert model_card("mnv2", local, from_local)["checkpoint"]["path"] == str((CKPT / FILE).resolve())
    assert not (tmp_path / "unused").exists(), "a local checkpoint is not copied into the hub cache"
    assert not list(private_tmp.iterdir()), "the private hub dir was left behind"


def test_altered_cached_weights_are_refused_by_torchvisions_hash_prefix(tmp_path, offline):
    state = torch.load(CKPT / FILE, map_location="cpu", weights_only=True)
    state["classifier.1.bias"] = state["classifier.1.bias"] + 1  # still a valid, safe state_dict
    cached = cache_file(tmp_path / "torch")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    actual = hashlib.sha256(cached.read_bytes()).hexdigest()
    with pytest.raises(ModelError) as err:
        build_model("mnv2", FROM_CACHE, data_dir=DATA_DIR, torch_home=tmp_path / "torch")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model mnv2: checkpoint {cached} is not torchvision's")
    assert f"its sha256 starts {actual[:8]}, torchvision expects b0353104" in message
    with pytest.raises(ModelError, match=f"has sha256 {actual[:16]}…, but models.mnv2.sha256 expects {SHA256[:16]}"):
        build_model("mnv2", dict(FROM_CACHE, sha256=SHA256), data_dir=DATA_DIR, torch_home=tmp_path / "torch")


@pytest.mark.parametrize("altered", [False, True])
def test_missing_cache_file_is_downloaded_with_its_hash_checked(tmp_path, monkeypatch, altered):
    """The real download (redirected to a local file:// URL: no network here) lands in the cache only if its hash
    matches torchvision's prefix."""
    source = tmp_path / "served.pth"
    shutil.copyfile(CKPT / FILE, source)
    if altered:
        source.write_bytes(source.read_bytes() + b"\0")
    download = torch.hub.download_url_to_file
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **kw: download(source.as_uri(), dst, **kw))
    torch_home = tmp_path / "torch"
    if altered:
        with pytest.raises(ModelError, match=r"model mnv2: cannot download .* invalid hash value") as err:
            build_model("mnv2", FROM_CACHE, data_dir=DATA_DIR, torch_home=torch_home)
        assert "\n" not in str(err.value) and f"set models.mnv2.checkpoint to a local copy of {FILE}" in str(err.value)
        assert not list(cache_file(torch_home).parent.iterdir()), "a bad download was left in the cache"
        return
    model = build_model("mnv2", FROM_CACHE, data_dir=DATA_DIR, torch_home=torch_home)
    assert model.unitscope_checkpoint == {
        "path": str(cache_file(torch_home)),
        "sha256": SHA256,
        "bytes": (CKPT / FILE).stat().st_size,
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    "entry",
    [
        {"arch": "torchvision.mobilenet_v2", "weights": "IMAGENET1K_V1"},  # torchvision's loader
        {"arch": "torchvision.mobilenet_v2"},  # checkpoint only
        {"arch": "cifar_resnet20"},
    ],
    ids=["tv-weights", "tv-checkpoint", "cifar"],
)
def test_local_pickle_pinned_by_its_own_sha256_is_refused_without_running(tmp_path, offline, protocol, entry):
    """A hash only says the file is the one configured, not that it is safe: untrusted, it is never unpickled."""
    marker = tmp_path / "pwned"
    path = plant(tmp_path / FILE, marker, protocol)  # even named like torchvision's file
    spec = dict(entry, checkpoint=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    spec["preprocessing"] = IMAGENET_PRE
    with pytest.raises(ModelError) as err:
        build_model("evil", spec, data_dir=DATA_DIR, torch_home=tmp_path / "torch")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model evil: ") and str(path) in message
    assert "weights_only=True" in message
    assert not marker.exists(), "the pickle ran"
    assert not (tmp_path / "torch").exists(), "something was written to the hub cache"
