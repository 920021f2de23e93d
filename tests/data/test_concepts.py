"""Concept datasets: CamVid frames with object and color masks, and the Broden layout on a fixture."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from PIL import Image

from unitscope.data.concepts import (
    COLOR_NAMES,
    BrodenConcepts,
    CamVidConcepts,
    ConceptError,
    mask_shape,
    name_colors,
    name_colors_exact,
    open_concepts,
)


@pytest.fixture(scope="module")
def camvid(data_dir):
    return CamVidConcepts(data_dir / "segmentation_camvid", size=3, seed=0)


def test_camvid_concepts_and_annotation(camvid, data_dir):
    assert len(camvid) == 3 and camvid.categories == ["object", "color"] and camvid.label_size == (360, 480)
    table = camvid.concepts
    assert list(table[table["category"] == "object"]["name"])[:4] == ["sky", "building", "pole", "road"]
    assert list(table[table["category"] == "color"]["name"]) == list(COLOR_NAMES)
    assert table["code"].tolist() == list(range(1, 23)) and camvid.n_codes == 23
    annotation = camvid.annotation(0)
    assert annotation.pixels.shape == (2, 360, 480) and annotation.categories == {"object", "color"}
    ids = np.asarray(Image.open(data_dir / "segmentation_camvid" / "labels" / f"{camvid.names[0]}.png"))
    objects, colors = annotation.pixels
    np.testing.assert_array_equal(objects[ids < 11], ids[ids < 11] + 1)  # label id i -> code i + 1
    assert (objects[ids == 11] == 0).all()  # void carries no concept
    assert colors.min() >= 12 and colors.max() <= 22  # every pixel has one color name


def test_camvid_masks_at_a_coarser_resolution_are_nearest_samples(camvid):
    assert mask_shape((360, 480), 112) == (112, 149) and mask_shape((360, 480), None) == (360, 480)
    full, small = camvid.annotation(1), camvid.annotation(1, (90, 120))
    assert small.pixels.shape == (2, 90, 120)
    assert set(np.unique(small.pixels[0])) <= set(np.unique(full.pixels[0]))
    agree = (small.pixels[0] == full.pixels[0][2::4, 2::4]).mean()
    assert agree > 0.9


def test_draw_is_seeded_and_a_smaller_size_is_a_prefix(data_dir):
    root = data_dir / "segmentation_camvid"
    five, three = CamVidConcepts(root, size=5, seed=1), CamVidConcepts(root, size=3, seed=1)
    assert five.image_ids[:3] == three.image_ids
    assert CamVidConcepts(root, size=5, seed=2).image_ids != five.image_ids


def test_color_names_of_known_colors():
    pixels = {
        "red": (230, 0, 0),
        "green": (40, 140, 40),
        "blue": (30, 60, 200),
        "white": (250, 250, 250),
        "black": (10, 10, 10),
        "grey": (128, 128, 128),
        "yellow": (235, 230, 40),
        "orange": (255, 150, 0),
        "pink": (255, 170, 200),
        "purple": (120, 40, 150),
        "brown": (100, 60, 30),
    }
    rgb = np.array(list(pixels.values()), dtype=np.uint8)
    assert [COLOR_NAMES[i] for i in name_colors_exact(rgb)] == list(pixels)
    assert [COLOR_NAMES[i] for i in name_colors(rgb[None])[0]] == list(pixels)
    assert COLOR_NAMES[name_colors_exact(np.array([135, 180, 230]))] == "blue"  # pale sky: hue, not grey
    random = np.random.default_rng(0).integers(0, 256, size=(4000, 3)).astype(np.uint8)
    assert (name_colors(random) == name_colors_exact(random)).mean() > 0.95  # the 6-bit lookup table


def write_broden(root, *, image_size=24, seg_size=12):
    """A tiny dataset in Broden's layout: 3 images, object (two layers in image 0), part, scene."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(root / "images" / name)

    def segmentation(name, codes):
        rgb = np.zeros((seg_size, seg_size, 3), dtype=np.uint8)
        rgb[..., 0], rgb[..., 1] = codes % 256, codes // 256
        Image.fromarray(rgb).save(root / "images" / name)

    car = np.zeros((seg_size, seg_size), int)
    car[:6, :6] = 300  # a code above 255 needs the green channel
    person = np.zeros((seg_size, seg_size), int)
    person[6:, 6:] = 2
    segmentation("a_object.png", car)
    segmentation("a_object2.png", person)
    wheel = np.zeros((seg_size, seg_size), int)
    wheel[:3, :3] = 5
    segmentation("a_part.png", wheel)
    segmentation("b_object.png", np.where(np.arange(seg_size)[None, :] < 4, 2, 0).repeat(seg_size, 0))
    header = ["image", "split", "ih", "iw", "sh", "sw", "object", "part", "scene"]
    rows = [
        ["a.jpg", "train", image_size, image_size, seg_size, seg_size, "a_object.png;a_object2.png", "a_part.png", ""],
        ["b.jpg", "train", image_size, image_size, seg_size, seg_size, "b_object.png", "", "7"],
        ["c.jpg", "val", image_size, image_size, seg_size, seg_size, "", "", "7"],
    ]
    with open(root / "index.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    with open(root / "category.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["name", "first", "last", "count", "frequency"], ["object", 1, 300, 3, 2], ["part", 5, 5, 1, 1]]
            + [["scene", 7, 7, 1, 2]]
        )
    labels = [
        ["number", "name", "category", "frequency", "coverage", "syns"],
        [0, "-", "", 0, 0, ""],
        [2, "person", "object(2);part(1)", 2, 0.3, ""],
        [5, "wheel", "part(1)", 1, 0.02, ""],
        [7, "street", "scene(2)", 2, 1.0, ""],
        [300, "car", "object(1)", 1, 0.25, ""],
    ]
    with open(root / "label.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(labels)
    return root


def test_broden_layout_reads_pixels_scalars_and_categories(tmp_path):
    dataset = BrodenConcepts(write_broden(tmp_path / "broden"))
    assert dataset.categories == ["object", "part", "scene"] and dataset.label_size == (12, 12)
    table = dataset.concepts.set_index("name")
    assert table.loc["person", "category"] == "object"  # its primary category: where it occurs most
    assert table.loc["car", "code"] == 300 and table.loc["street", "category"] == "scene"
    order = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    a = dataset.annotation(order["broden/a.jpg"])
    assert a.pixels.shape == (3, 12, 12) and a.categories == {"object", "part"} and a.scalars == ()
    assert (a.pixels[0][:6, :6] == 300).all() and (a.pixels[1][6:, 6:] == 2).all() and (a.pixels[2][:3, :3] == 5).all()
    b = dataset.annotation(order["broden/b.jpg"], (6, 6))
    assert b.pixels.shape == (1, 6, 6) and b.scalars == (7,) and b.categories == {"object", "scene"}
    c = dataset.annotation(order["broden/c.jpg"])
    assert c.pixels.shape[0] == 0 and c.scalars == (7,)
    assert dataset.image(0).size == (24, 24) and dataset.max_layers == 3


def test_broden_category_filter_and_errors(tmp_path):
    root = write_broden(tmp_path / "broden")
    objects = BrodenConcepts(root, categories=["object"])
    assert len(objects) == 2 and set(objects.concepts["category"]) == {"object"}  # c.jpg has no object
    assert objects.annotation(0).pixels.max() in (2, 300)
    with pytest.raises(ConceptError, match=r"dissection.concepts.categories: texture not in .*category.csv"):
        BrodenConcepts(root, categories=["texture"])
    (root / "images" / "a_part.png").unlink()
    with pytest.raises(ConceptError, match=r"segmentation .*a_part.png does not exist"):
        [BrodenConcepts(root).annotation(i) for i in range(3)]
    with pytest.raises(ConceptError, match=r"index.csv does not exist"):
        BrodenConcepts(tmp_path)


def test_broden_index_cannot_reach_outside_its_folder(tmp_path):
    root = write_broden(tmp_path / "broden")
    (tmp_path / "outside.png").write_bytes((root / "images" / "a_part.png").read_bytes())
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    index = (root / "index.csv").read_text()
    for entry, reason in [("../../outside.png", "path leaves the dataset folder"), ("link.png", "symlink to a file")]:
        (root / "index.csv").write_text(index.replace("a_part.png", entry))
        dataset = BrodenConcepts(root)
        order = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
        with pytest.raises(ConceptError, match=f"names segmentation '{re.escape(entry)}': {reason}"):
            dataset.annotation(order["broden/a.jpg"])
    (root / "index.csv").write_text(index.replace("b.jpg,", "../../outside.png,"))
    with pytest.raises(ConceptError, match="names image '../../outside.png': path leaves the dataset folder"):
        [BrodenConcepts(root).image(i) for i in range(3)]


def test_camvid_frame_linked_from_outside_is_refused(tmp_path, data_dir):
    source = data_dir / "segmentation_camvid"
    root = tmp_path / "camvid"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.csv").write_bytes((source / "classes.csv").read_bytes())
    name = sorted((source / "images").glob("*.jpg"))[0].stem
    (root / "images" / f"{name}.jpg").symlink_to(source / "images" / f"{name}.jpg")  # outside `root`
    (root / "labels" / f"{name}.png").write_bytes((source / "labels" / f"{name}.png").read_bytes())
    with pytest.raises(ConceptError, match=f"images/{name}.jpg: symlink to a file outside the dataset folder"):
        CamVidConcepts(root)


def test_open_concepts_errors_are_one_line(tmp_path, data_dir):
    with pytest.raises(ConceptError, match="kind: 'coco' is not one of camvid, broden"):
        open_concepts({"kind": "coco", "root": "x"}, data_dir=data_dir, resources_dir=tmp_path, seed=0)
    with pytest.raises(ConceptError, match="set dissection.concepts.sha256"):
        open_concepts({"kind": "broden", "root": "nowhere"}, data_dir=tmp_path, resources_dir=tmp_path, seed=0)
    with pytest.raises(ConceptError, match="expected a CamVid folder"):
        open_concepts({"kind": "camvid", "root": "nowhere"}, data_dir=tmp_path, resources_dir=tmp_path, seed=0)
    camvid = open_concepts(
        {"kind": "camvid", "root": "segmentation_camvid", "size": 2, "colors": False},
        data_dir=data_dir,
        resources_dir=tmp_path,
        seed=0,
    )
    assert camvid.categories == ["object"] and camvid.annotation(0).pixels.shape[0] == 1


def test_broden_download_is_checked_unpacked_and_read(tmp_path, monkeypatch):
    """The online path: the archive (broden1_224/ inside, as NetDissect's) is fetched, verified, unpacked."""
    import functools
    import hashlib
    import http.server
    import threading
    import zipfile

    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = write_broden(tmp_path / "site" / "broden1_224")
    archive = tmp_path / "served" / "broden1_224.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root.parent).as_posix())
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = {"kind": "broden", "root": None, "url": f"http://127.0.0.1:{server.server_port}/broden1_224.zip"}
        with pytest.raises(ConceptError, match="needs `root`"):
            open_concepts(source, data_dir=tmp_path, resources_dir=tmp_path / "resources", seed=0)
        dataset = open_concepts({**source, "sha256": sha}, data_dir=tmp_path, resources_dir=tmp_path / "res", seed=0)
    finally:
        server.shutdown()
        server.server_close()
    assert len(dataset) == 3 and (tmp_path / "res" / "downloads" / "dissection" / "broden1_224.zip").is_file()
    assert set(dataset.concepts["name"]) == {"person", "wheel", "street", "car"}
