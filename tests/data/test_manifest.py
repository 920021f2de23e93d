import shutil
from pathlib import Path

import pandas as pd
import pytest

from unitscope.data.manifest import (
    DataError,
    ImageLimits,
    ManifestDataset,
    build_manifest,
    folder_layout,
    listed_files,
    read_manifest,
    run_manifest,
    source_layout,
    stat_fingerprint,
)

FACES = {
    "kind": "folder",
    "root": "faces_utkface",
    "labels": "labels.csv",
    "path_column": "filename",
    "image_dir": "images",
    "label_column": "gender",
}


def test_manifest_of_real_faces_is_seeded_and_nested(data_dir):
    layout = folder_layout("faces", FACES, data_dir)
    small = build_manifest("faces", "face", layout, 20, seed=0)
    large = build_manifest("faces", "face", layout, 50, seed=0)
    other = build_manifest("faces", "face", layout, 20, seed=1)
    assert small["included"].all() and len(small) == 20
    assert list(large["image_id"][:20]) == list(small["image_id"])  # a smaller draw is a prefix
    assert set(other["image_id"]) != set(small["image_id"])
    assert set(small["label"]) <= {"0", "1"} and set(small["category"]) == {"face"}
    assert small["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert small["image_id"].str.startswith("faces/images/").all()


def _copy_subset(data_dir, tmp_path, n=12):
    """A writable copy of n UTKFace images and their labels."""
    root = tmp_path / "faces"
    (root / "images").mkdir(parents=True)
    labels = pd.read_csv(data_dir / "faces_utkface" / "labels.csv").head(n)
    for name in labels["filename"]:
        shutil.copy(data_dir / "faces_utkface" / "images" / name, root / "images" / name)
    labels.to_csv(root / "labels.csv", index=False)
    return root, labels


def test_corrupt_zero_byte_and_missing_images_are_excluded_with_reasons(data_dir, tmp_path):
    root, labels = _copy_subset(data_dir, tmp_path)
    images = root / "images"
    names = list(labels["filename"])
    truncated = (images / names[0]).read_bytes()
    (images / names[0]).write_bytes(truncated[: len(truncated) // 3])
    (images / names[1]).write_bytes(b"")
    (images / names[2]).write_bytes(b"this is not a jpeg")
    (images / names[3]).unlink()
    source = {**FACES, "root": str(root)}
    manifest = run_manifest(
        "faces",
        {"category": "face", "size": 100, "source": source},
        seed=0,
        data_dir=data_dir,
        resources_dir=tmp_path / "res",
        out_path=tmp_path / "m.parquet",
    )
    reasons = dict(zip(manifest["image_id"].str.split("/").str[-1], manifest["exclude_reason"], strict=True))
    assert reasons[names[1]] == "empty file (0 bytes)"
    assert reasons[names[3]] == "missing file"
    assert reasons[names[2]].startswith("unreadable image")
    assert reasons[names[0]].startswith("unreadable image")
    assert manifest["included"].sum() == len(names) - 4
    written = read_manifest(tmp_path / "m.parquet")
    assert len(written) == len(names) - 4 and written["included"].all()
    assert len(read_manifest(tmp_path / "m.parquet", included_only=False)) == len(names)


def test_draw_continues_past_excluded_images_to_reach_size(data_dir, tmp_path):
    root, labels = _copy_subset(data_dir, tmp_path)
    (root / "images" / labels["filename"][5]).write_bytes(b"")
    manifest = build_manifest("faces", "face", folder_layout("faces", {**FACES, "root": str(root)}, data_dir), 11, 0)
    assert manifest["included"].sum() == 11 and (~manifest["included"]).sum() == 1


def test_missing_folder_names_the_config_key(data_dir):
    with pytest.raises(DataError, match=r"datasets.faces.source.root: folder .*nowhere does not exist"):
        folder_layout("faces", {**FACES, "root": "nowhere"}, data_dir)


def test_missing_csv_column_names_key_and_lists_columns(data_dir):
    layout = folder_layout("faces", {**FACES, "label_column": "emotion"}, data_dir)
    with pytest.raises(DataError) as info:
        build_manifest("faces", "face", layout, 5, 0)
    message = str(info.value)
    assert "datasets.faces.source.label_column" in message and "'emotion'" in message and "filename" in message
    assert "\n" not in message


def test_download_source_is_fetched_verified_and_read(data_dir, tmp_path, http_zip_server):
    url, sha256 = http_zip_server
    source = {
        "kind": "download",
        "url": url,
        "sha256": sha256,
        "subdir": "faces",
        "labels": "labels.csv",
        "path_column": "filename",
        "image_dir": "images",
        "label_column": "gender",
        "retries": 0,
    }
    layout = source_layout("faces", source, data_dir=data_dir, resources_dir=tmp_path / "resources")
    manifest = build_manifest("faces", "face", layout, 5, 0)
    assert manifest["included"].all() and len(manifest) == 5
    assert (tmp_path / "resources" / "downloads" / "faces" / "faces.zip").is_file()


def test_manifest_dataset_yields_transformed_images(data_dir):
    manifest = build_manifest(
        "objects",
        "object",
        folder_layout(
            "objects",
            {
                "kind": "folder",
                "root": "objects_cifar10",
                "labels": "labels.csv",
                "path_column": "path",
                "label_column": "label",
            },
            data_dir,
        ),
        3,
        0,
    )
    dataset = ManifestDataset(manifest, lambda image: image.size)
    assert len(dataset) == 3 and dataset[2] == ((32, 32), 2)


@pytest.fixture
def http_zip_server(data_dir, tmp_path):
    """A zip of 6 real faces with a labels CSV, served on 127.0.0.1."""
    import hashlib
    import http.server
    import threading
    import zipfile

    root, labels = _copy_subset(data_dir, tmp_path / "src", n=6)
    archive = tmp_path / "serve" / "faces.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in root.rglob("*"):
            zf.write(path, f"faces/{path.relative_to(root)}")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(archive.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield (
            f"http://127.0.0.1:{server.server_port}/faces.zip",
            hashlib.sha256(archive.read_bytes()).hexdigest(),
        )
    finally:
        server.shutdown()
        server.server_close()


def _hostile_manifest(data_dir, tmp_path, **limits):
    from hostile import FACES_SOURCE, make_hostile_folder

    root = make_hostile_folder(tmp_path, data_dir)
    layout = folder_layout("faces", {**FACES_SOURCE, "root": str(root)}, data_dir)
    return root, build_manifest("faces", "face", layout, 100, 0, ImageLimits(key="datasets.faces", **limits))


def test_no_file_outside_the_dataset_folder_is_read(data_dir, tmp_path):
    from hostile import EXPECTED_REASONS, GOOD

    root, manifest = _hostile_manifest(data_dir, tmp_path)
    reasons = dict(zip(manifest["image_id"].str.removeprefix("faces/images/"), manifest["exclude_reason"], strict=True))
    assert reasons.pop("../../secret.jpg") == EXPECTED_REASONS["../../secret.jpg"]
    assert reasons.pop("outside-link.jpg") == EXPECTED_REASONS["outside-link.jpg"]
    absolute = [key for key in reasons if key.endswith("secret.jpg")]
    assert len(absolute) == 1 and reasons.pop(absolute[0]).startswith("absolute path in the labels CSV")
    assert reasons.pop("bomb.png").startswith(EXPECTED_REASONS["bomb.png"])
    assert reasons.pop("strip.png") == EXPECTED_REASONS["strip.png"]
    assert set(reasons.values()) == {""} and len(reasons) == GOOD + 1  # the inside symlink is fine
    excluded = manifest[~manifest["included"]]
    assert (excluded["sha256"] == "").all()  # nothing outside was even hashed
    inside = manifest[manifest["included"]]
    assert all(Path(p).resolve().is_relative_to(root.resolve()) for p in inside["path"])
    assert manifest["image_id"].is_unique


def test_pixel_limit_is_read_from_the_header(data_dir, tmp_path):
    from hostile import png_header_only

    root, _ = _copy_subset(data_dir, tmp_path, n=2)
    (root / "images" / "big.png").write_bytes(png_header_only(7000, 7000))  # 49 Mpx: under PIL's own bomb limit
    labels = pd.read_csv(root / "labels.csv")
    pd.concat([labels, pd.DataFrame({"filename": ["big.png"], "gender": [0]})]).to_csv(root / "labels.csv", index=False)
    layout = folder_layout("faces", {**FACES, "root": str(root)}, data_dir)
    manifest = build_manifest("faces", "face", layout, 10, 0, ImageLimits(key="datasets.faces"))
    reason = manifest.set_index("image_id").loc["faces/images/big.png", "exclude_reason"]
    assert reason == "image is 7000×7000 = 49,000,000 pixels, over datasets.faces.max_pixels (40,000,000)"
    relaxed = build_manifest("faces", "face", layout, 10, 0, ImageLimits(max_pixels=50_000_000))
    assert relaxed.set_index("image_id").loc["faces/images/big.png", "exclude_reason"].startswith("unreadable")


def test_duplicate_rows_are_dropped_and_conflicting_ones_refused(data_dir, tmp_path):
    root, labels = _copy_subset(data_dir, tmp_path, n=4)
    first = labels.iloc[[0]].assign(filename="./" + labels["filename"].iloc[0])  # the same image, written otherwise
    pd.concat([labels, first]).to_csv(root / "labels.csv", index=False)
    layout = folder_layout("faces", {**FACES, "root": str(root)}, data_dir)
    manifest = build_manifest("faces", "face", layout, 10, 0)
    assert len(manifest) == 4 and manifest["image_id"].is_unique
    pd.concat([labels, first.assign(gender=1 - first["gender"])]).to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"lines 2, 6 name the same image .* with different labels \('\d', '\d'\)"):
        build_manifest("faces", "face", layout, 10, 0)


def test_only_files_the_csv_names_inside_the_folder_are_listed(data_dir, tmp_path):
    from hostile import FACES_SOURCE, GOOD, make_hostile_folder

    root = make_hostile_folder(tmp_path, data_dir)
    listed = listed_files("faces", {**FACES_SOURCE, "root": str(root)}, data_dir)
    names = [Path(path).name for path in listed]
    assert names[0] == "labels.csv" or "labels.csv" in names
    assert len(names) == 1 + GOOD + 3  # the CSV, the good images, the inside link, the bomb and the strip
    assert {"inside-link.jpg", "bomb.png", "strip.png"} <= set(names)
    assert not {"secret.jpg", "outside-link.jpg", "dangling.jpg", "loop-a.jpg", "{x}.jpg"} & set(names)
    assert listed_files("faces", {**FACES_SOURCE, "root": str(tmp_path / "nowhere")}, data_dir) == []


def test_stat_fingerprint_changes_with_size_or_mtime(tmp_path):
    import os

    image = tmp_path / "{x}.jpg"
    image.write_bytes(b"one")
    before = stat_fingerprint([str(image)])
    assert stat_fingerprint([str(image)]) == before
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000))
    assert stat_fingerprint([str(image)]) != before
