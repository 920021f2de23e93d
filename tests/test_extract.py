import numpy as np
import pytest
import torch
import zarr
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unitscope.data.manifest import build_manifest, folder_layout, write_manifest
from unitscope.extract import ExtractionError, extract_layers, extract_to_zarr, open_store, run_extraction
from unitscope.fsutil import publish_tree
from unitscope.hooks import spatial_peak


class Tensors(Dataset):
    def __init__(self, x, fail_at=None):
        self.x, self.fail_at = x, fail_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash at image {i}")
        return self.x[i], i


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU()).eval()


def test_store_layout_values_and_attributes(tmp_path):
    model, x = tiny_model(), torch.randn(10, 3, 12, 12)
    loader = DataLoader(Tensors(x), batch_size=4)
    ids = [f"set/img{i}.jpg" for i in range(10)]
    path = extract_to_zarr(
        model,
        loader,
        ids,
        "2",
        tmp_path / "a.zarr",
        save_maps=True,
        maps_chunk_images=3,
        attrs={"model": "tiny"},
        progress=False,
    )
    store = open_store(path)
    with torch.inference_mode():
        expected = model[:3](x)
    np.testing.assert_allclose(store["means"][:], expected.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert store["means"].dtype == np.float32 and store["maps"].dtype == np.float16
    assert store["maps"].shape == (10, 4, 5, 5) and store["maps"].chunks == (3, 4, 5, 5)
    np.testing.assert_allclose(store["maps"][:].astype(np.float32), expected.numpy(), rtol=1e-2, atol=1e-3)
    assert list(store["image_id"][:]) == ids
    assert store.attrs["model"] == "tiny" and store.attrs["n_channels"] == 4 and store.attrs["map_shape"] == [4, 5, 5]
    assert "torch" in store.attrs["package_versions"]
    # each image's peak per channel and its first maximal location y * W + x (the atlas's top-N reads these)
    flat = expected.flatten(2)
    np.testing.assert_allclose(store["peak"][:], flat.amax(dim=2).numpy(), rtol=1e-6, atol=1e-6)
    at = store["peak_at"][:]
    assert store["peak_at"].dtype == np.int32 and store.attrs["map_size"] == [5, 5]
    np.testing.assert_allclose(np.take_along_axis(flat.numpy(), at[..., None], 2)[..., 0], store["peak"][:], rtol=1e-6)
    ties = torch.zeros(2, 4, 5, 5)  # a map with equal maxima: the first in row-major order
    with torch.inference_mode():
        assert (spatial_peak(ties)[1] == 0).all()
        tied = torch.zeros(1, 1, 5, 5).index_put_(
            (torch.tensor([0]), torch.tensor([0]), torch.tensor([3, 1]), torch.tensor([2, 4])), torch.tensor(7.0)
        )
        assert spatial_peak(tied)[1].item() == 1 * 5 + 4


def test_crash_midway_leaves_no_store_and_keeps_the_previous_one(tmp_path):
    model, x = tiny_model(), torch.randn(10, 3, 12, 12)
    ids = [str(i) for i in range(10)]
    target = tmp_path / "a.zarr"
    extract_to_zarr(model, DataLoader(Tensors(x), batch_size=4), ids, "1", target, progress=False)
    before = open_store(target)["means"][:]
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_to_zarr(model, DataLoader(Tensors(x * 2, fail_at=7), batch_size=4), ids, "1", target, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]  # no temporary store left behind
    np.testing.assert_array_equal(open_store(target)["means"][:], before)
    with pytest.raises(RuntimeError):
        extract_to_zarr(
            model,
            DataLoader(Tensors(x, fail_at=0), batch_size=4),
            ids,
            "1",
            tmp_path / "b.zarr",
            progress=False,
        )
    assert not (tmp_path / "b.zarr").exists()


def test_nan_activations_are_reported_not_stored(tmp_path):
    model, x = tiny_model(), torch.randn(6, 3, 12, 12)
    x[4] = float("nan")
    with pytest.raises(ExtractionError, match=r"layer '1': 1 of 6 images gave NaN"):
        extract_to_zarr(
            model,
            DataLoader(Tensors(x), batch_size=4),
            list("abcdef"),
            "1",
            tmp_path / "n.zarr",
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_one_pass_writes_every_layer_store_as_single_layer_runs_would(tmp_path):
    """A pass over two layers gives each layer the values of its own run, full maps only where asked, and never
    computes past the deepest requested layer."""
    model, x = tiny_model(), torch.randn(10, 3, 12, 12)
    ids = [str(i) for i in range(10)]
    ran = []
    model[3].register_forward_hook(lambda *_: ran.append("after the deepest layer"))
    loader = DataLoader(Tensors(x), batch_size=4)
    stores = extract_layers(model, loader, ids, {"1": False, "2": True}, tmp_path / "m.pass", progress=False)
    assert sorted(p.name for p in (tmp_path / "m.pass").iterdir()) == ["1.zarr", "2.zarr"] and ran == []
    for layer, keep_maps in (("1", False), ("2", True)):
        alone = extract_to_zarr(
            model, loader, ids, layer, tmp_path / f"alone{layer}.zarr", save_maps=keep_maps, progress=False
        )
        pass_store, single = open_store(stores[layer]), open_store(alone)
        np.testing.assert_array_equal(pass_store["means"][:], single["means"][:])
        assert ("maps" in pass_store) is keep_maps and pass_store.attrs["layer"] == layer
    np.testing.assert_array_equal(open_store(stores["2"])["maps"][:], open_store(tmp_path / "alone2.zarr")["maps"][:])


def test_a_failing_layer_leaves_no_pass_folder(tmp_path):
    model, x = tiny_model(), torch.randn(6, 3, 12, 12)
    x[2] = float("nan")
    with pytest.raises(ExtractionError, match="layer '0': 1 of 6 images"):
        extract_layers(
            model,
            DataLoader(Tensors(x), batch_size=4),
            list("abcdef"),
            {"0": True, "1": False},
            tmp_path / "m.pass",
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_publishing_a_store_links_its_files_and_replaces_an_old_one_whole(tmp_path):
    source = tmp_path / "pass" / "layer.zarr"
    (source / "means").mkdir(parents=True)
    (source / "means" / "c0").write_bytes(b"new")
    (source / "zarr.json").write_text("{}")
    target = tmp_path / "store" / "layer.zarr"
    (target / "stale").mkdir(parents=True)
    publish_tree(source, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["means", "means/c0", "zarr.json"]
    assert (target / "means" / "c0").stat().st_ino == (source / "means" / "c0").stat().st_ino  # a link, not a copy
    with pytest.raises(FileNotFoundError, match="no such folder to publish"):
        publish_tree(tmp_path / "absent", tmp_path / "other.zarr")
    assert not (tmp_path / "other.zarr").exists()


def test_run_extraction_on_real_cifar_images_matches_the_model(data_dir, tmp_path, default_config):
    from unitscope.config import validate_config
    from unitscope.data.manifest import ManifestDataset
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.registry import build_model
    from unitscope.runtime import RunSettings
    from unitscope.settings import ModelRef

    config = validate_config(default_config)
    spec = config["models"]["resnet20_cifar"]
    manifest = build_manifest(
        "objects",
        "object",
        folder_layout("objects", config["datasets"]["objects"]["source"], data_dir),
        24,
        0,
    )
    write_manifest(manifest, tmp_path / "m.parquet")
    ref = ModelRef(name="resnet20_cifar", spec=spec, data_dir=str(data_dir), torch_home=str(tmp_path / "torch"))
    stores = run_extraction(
        ref,
        dataset_name="objects",
        manifest_path=tmp_path / "m.parquet",
        layers={"layer3": False},
        out_dir=tmp_path / "objects.pass",
        run=RunSettings(device="cpu", batch_size=10, num_workers=0),
    )
    store = zarr.open_group(str(stores["layer3"]), mode="r")
    assert store["means"].shape == (24, 64)
    assert list(store["image_id"][:]) == list(manifest["image_id"])
    model = build_model("resnet20_cifar", spec, data_dir=data_dir, torch_home=tmp_path / "torch")
    dataset = ManifestDataset(manifest, build_transform(spec["preprocessing"]))
    x = torch.stack([dataset[i][0] for i in (0, 23)])
    with torch.inference_mode():
        h = model.layer3(model.layer2(model.layer1(torch.relu(model.bn1(model.conv1(x))))))
    np.testing.assert_allclose(store["means"][[0, 23]], h.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    assert store.attrs["checkpoint_sha256"] == spec["sha256"] and store.attrs["dataset"] == "objects"
