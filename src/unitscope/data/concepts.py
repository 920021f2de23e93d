"""Concept datasets for Network Dissection: images whose pixels (or whole images) carry concept labels.

Every source gives the same interface (`ConceptDataset`): a table of concepts with global integer
codes (1..; 0 means "no concept"), each in one category ("object", "color", ...), and per image
an RGB picture plus an `Annotation` at a requested mask resolution:

- `pixels`: int32 [L, H, W] label layers of concept codes (0 = no concept at that pixel). A pixel
  may carry one concept per layer (CamVid: layer 0 objects, layer 1 colors; Broden: one layer per
  segmentation file, so overlapping objects and parts are kept).
- `scalars`: image-level concept codes (Broden's scene and texture): the concept covers the image.
- `categories`: the categories this image is annotated for. Dissection counts a unit's mask
  against a concept only on images annotated for the concept's category (as NetDissect does).

Two sources:

- `CamVidConcepts`: the CamVid frames in `segmentation_camvid/` (images/<name>.jpg, labels/<name>.png
  with 8-bit ids, classes.csv with label_id, concept, is_void). The 11 object classes become
  concepts of category "object"; the void class is "no concept" (its pixels count as annotated
  background of the object category, like Broden's unlabelled pixels). With `colors=True` every
  pixel also gets one of Broden's 11 color names (category "color"), computed from the frame.
- `BrodenConcepts`: the Broden layout (`index.csv`, `category.csv`, `label.csv`, segmentation
  PNGs under images/ encoding label = R + 256 * G, image-level labels as integers), read from a
  local folder or downloaded (`broden1_224`, NetDissect's official archive) with a pinned sha256.

Label maps are resized to the mask resolution with nearest neighbour (labels are categorical).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from unitscope.colour import srgb_to_lab
from unitscope.data.download import DEFAULT_MAX_UNPACKED_GB, fetch_and_unpack
from unitscope.data.manifest import confined_path, resolve
from unitscope.errors import UnitscopeError

# Broden's 11 color concepts (van de Weijer et al.'s basic color terms, as in NetDissect's "-c" labels).
COLOR_NAMES = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red", "white", "yellow")
# One prototype per name: the color the xkcd color survey's respondents most agreed on for that name
# (matplotlib.colors.XKCD_COLORS); see `name_colors_exact` for how a pixel is matched to them. This stands in
# for Broden's learned color naming (van de Weijer et al. 2009), which is not available offline.
COLOR_PROTOTYPES = {
    "black": "#000000",
    "blue": "#0343df",
    "brown": "#653700",
    "green": "#15b01a",
    "grey": "#929591",
    "orange": "#f97306",
    "pink": "#ff81c0",
    "purple": "#7e1e9c",
    "red": "#e50000",
    "white": "#ffffff",
    "yellow": "#ffff14",
}
ACHROMATIC_NAMES = ("black", "grey", "white")
ACHROMATIC_CHROMA = 12.0  # C*ab below this is named by lightness only (black, grey, white)
COLOR_LUT_BITS = 6  # colors are named on a 64^3 RGB grid (bin centres): a lookup per pixel
BRODEN_URL = "http://netdissect.csail.mit.edu/data/broden1_224.zip"
BRODEN_META = ("image", "split", "ih", "iw", "sh", "sw")


class ConceptError(UnitscopeError, ValueError):
    """A concept source is misconfigured or its files are wrong; the message is one line."""


@dataclass(frozen=True)
class Annotation:
    """One image's concept labels at mask resolution (see the module docstring)."""

    pixels: np.ndarray  # int32 [L, H, W], concept codes, 0 = none
    scalars: tuple[int, ...] = ()
    categories: frozenset[str] = field(default_factory=frozenset)


def mask_shape(label_size: tuple[int, int], mask_size: int | None) -> tuple[int, int]:
    """(H, W) of the masks: the label resolution, or its shorter side scaled to `mask_size` pixels."""
    height, width = label_size
    if mask_size is None:
        return height, width
    scale = mask_size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map [h, w] to `shape` (H, W)."""
    if labels.shape == tuple(shape):
        return labels
    return np.asarray(Image.fromarray(labels.astype(np.int32)).resize(shape[::-1], Image.NEAREST))


# ------------------------------------------------------------------------------------------------
# color names


def _prototype_lab() -> np.ndarray:
    rgb = np.array([[int(COLOR_PROTOTYPES[n][i : i + 2], 16) for i in (1, 3, 5)] for n in COLOR_NAMES], float)
    return srgb_to_lab(rgb / 255.0)


def name_colors_exact(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOR_NAMES of each uint8 RGB pixel [..., 3].

    In CIELAB: a pixel with chroma C*ab below ACHROMATIC_CHROMA is black, grey or white, whichever
    prototype is nearest in lightness; a coloured pixel takes the chromatic prototype nearest in
    lightness and hue, sqrt(dL^2 + dH^2) with the CIE hue difference dH = 2 sqrt(C C') sin(dh / 2).
    Chroma differences are left out on purpose: the survey prototypes are the most saturated
    examples of each name, while a dull green in a photo is still called green.
    """
    lab = srgb_to_lab(np.asarray(rgb, dtype=np.float64) / 255.0)
    protos = _prototype_lab()
    lightness, chroma = lab[..., 0], np.hypot(lab[..., 1], lab[..., 2])
    hue = np.arctan2(lab[..., 2], lab[..., 1])
    proto_chroma = np.hypot(protos[:, 1], protos[:, 2])
    proto_hue = np.arctan2(protos[:, 2], protos[:, 1])
    achromatic = np.array([name in ACHROMATIC_NAMES for name in COLOR_NAMES])
    d_lightness = lightness[..., None] - protos[:, 0]
    d_hue = 2 * np.sqrt(chroma[..., None] * proto_chroma) * np.sin((hue[..., None] - proto_hue) / 2)
    chromatic_distance = np.where(achromatic, np.inf, d_lightness**2 + d_hue**2)
    achromatic_distance = np.where(achromatic, d_lightness**2, np.inf)
    grey_pixel = (chroma < ACHROMATIC_CHROMA)[..., None]
    return np.where(grey_pixel, achromatic_distance, chromatic_distance).argmin(axis=-1).astype(np.uint8)


@cache
def _color_lut() -> np.ndarray:
    levels = 1 << COLOR_LUT_BITS
    step = 256 // levels
    centres = np.arange(levels) * step + (step - 1) / 2
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
    return np.concatenate([name_colors_exact(grid[i : i + 16384]) for i in range(0, len(grid), 16384)])


def name_colors(rgb: np.ndarray) -> np.ndarray:
    """Color-name index (into COLOR_NAMES) of every pixel of a uint8 RGB image [H, W, 3] (lookup table)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    shift = 8 - COLOR_LUT_BITS
    q = (rgb >> shift).astype(np.int64)
    return _color_lut()[(q[..., 0] << (2 * COLOR_LUT_BITS)) | (q[..., 1] << COLOR_LUT_BITS) | q[..., 2]]


# ------------------------------------------------------------------------------------------------
# datasets


class ConceptDataset:
    """Interface of a concept source (see the module docstring)."""

    name: str
    categories: list[str]
    concepts: pd.DataFrame  # columns code (int >= 1), name, category
    image_ids: list[str]
    label_size: tuple[int, int]  # (H, W) of the native annotation
    max_layers: int  # the most label layers any image has

    def __len__(self) -> int:
        return len(self.image_ids)

    def image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def annotation(self, index: int, shape: tuple[int, int] | None = None) -> Annotation:
        raise NotImplementedError

    @property
    def n_codes(self) -> int:
        """One more than the largest concept code (code 0 = no concept)."""
        return int(self.concepts["code"].max()) + 1 if len(self.concepts) else 1

    def describe(self) -> str:
        counts = self.concepts["category"].value_counts()
        parts = ", ".join(f"{counts.get(c, 0)} {c}" for c in self.categories)
        return f"{self.name}: {len(self)} images, concepts: {parts}"


def _draw(n_available: int, size: int | None, seed: int) -> np.ndarray:
    """Indices of `size` items drawn (seeded) from `n_available`; a smaller size is a prefix of a larger one."""
    if size is None or size >= n_available:
        return np.arange(n_available)
    return np.random.default_rng(seed).permutation(n_available)[:size]


class CamVidConcepts(ConceptDataset):
    """CamVid frames with 11 object concepts (void ignored) and, optionally, 11 color concepts."""

    def __init__(self, root: str | os.PathLike, *, colors: bool = True, size: int | None = None, seed: int = 0):
        root = Path(root)
        classes_csv = root / "classes.csv"
        if not classes_csv.is_file():
            raise ConceptError(f"dissection.concepts.root: {classes_csv} does not exist (expected a CamVid folder)")
        classes = pd.read_csv(classes_csv)
        missing = {"label_id", "concept", "is_void"} - set(classes.columns)
        if missing:
            raise ConceptError(f"{classes_csv}: missing columns {', '.join(sorted(missing))}")
        names = sorted(p.stem for p in (root / "images").glob("*.jpg"))
        if not names:
            raise ConceptError(f"dissection.concepts.root: no images/*.jpg under {root}")
        for relative in (path for n in names for path in (f"images/{n}.jpg", f"labels/{n}.png")):
            if (reason := confined_path(root, relative)[1]) is not None:  # the folder is untrusted
                raise ConceptError(f"dissection.concepts.root: {root / relative}: {reason}")
        unlabelled = [n for n in names if not (root / "labels" / f"{n}.png").is_file()]
        if unlabelled:
            raise ConceptError(f"{root}: {len(unlabelled)} frames lack labels/<name>.png, e.g. {unlabelled[0]}.png")
        self.root = root
        self.name = "camvid"
        self.names = [names[i] for i in _draw(len(names), size, seed)]
        self.image_ids = [f"camvid/{n}" for n in self.names]
        objects = classes[classes["is_void"] == 0].sort_values("label_id")
        rows = [(i + 1, str(name), "object") for i, name in enumerate(objects["concept"])]
        self._object_codes = np.zeros(256, dtype=np.int32)  # label id -> code (void and unknown ids -> 0)
        self._object_codes[objects["label_id"].to_numpy()] = np.arange(1, len(objects) + 1)
        self.categories = ["object"]
        self.colors = colors
        if colors:
            self._first_color = len(rows) + 1
            rows += [(self._first_color + i, name, "color") for i, name in enumerate(COLOR_NAMES)]
            self.categories.append("color")
        self.concepts = pd.DataFrame(rows, columns=["code", "name", "category"])
        self.max_layers = len(self.categories)
        with Image.open(root / "labels" / f"{self.names[0]}.png") as first:
            self.label_size = (first.height, first.width)

    def image(self, index: int) -> Image.Image:
        with Image.open(self.root / "images" / f"{self.names[index]}.jpg") as image:
            return image.convert("RGB")

    def annotation(self, index: int, shape: tuple[int, int] | None = None) -> Annotation:
        name = self.names[index]
        with Image.open(self.root / "labels" / f"{name}.png") as label_image:
            ids = np.asarray(label_image)
        if ids.ndim != 2 or ids.shape != self.label_size:
            raise ConceptError(
                f"{self.root / 'labels' / f'{name}.png'}: expected a {self.label_size[0]}x{self.label_size[1]} "
                f"single-channel label image, got shape {list(ids.shape)}"
            )
        layers = [self._object_codes[ids]]
        if self.colors:
            rgb = np.asarray(self.image(index))
            if rgb.shape[:2] != ids.shape:
                rgb = np.asarray(Image.fromarray(rgb).resize(ids.shape[::-1], Image.BILINEAR))
            layers.append(name_colors(rgb).astype(np.int32) + self._first_color)
        shape = tuple(shape) if shape is not None else self.label_size
        pixels = np.stack([resize_labels(layer, shape) for layer in layers]).astype(np.int32)
        return Annotation(pixels=pixels, categories=frozenset(self.categories))


def _csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConceptError(f"Broden layout: {path} does not exist")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _primary_category(spec: str, path: Path, number: str) -> str:
    """label.csv's category field, e.g. 'object(12);part(3)': the category the label occurs in most."""
    found = re.findall(r"([^;()]+)\((\d+)\)", spec or "")
    if not found:
        raise ConceptError(f"{path}: label {number} has category {spec!r}, expected like 'object(12);part(3)'")
    return max(found, key=lambda item: int(item[1]))[0].strip()


class BrodenConcepts(ConceptDataset):
    """The Broden dataset layout (NetDissect): index.csv, category.csv, label.csv, images/.

    Each index.csv row names an image and, per category column, ';'-separated entries: PNG files
    (relative to images/, pixel label = R + 256 * G, at sh x sw) or integers (image-level labels).
    A label's category is its primary one (the category it occurs in most, from label.csv), as in
    NetDissect-Lite. `categories` restricts which categories are used (None: all of category.csv).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        categories: list[str] | None = None,
        size: int | None = None,
        seed: int = 0,
    ):
        root = Path(root)
        if not (root / "index.csv").is_file():
            raise ConceptError(f"dissection.concepts.root: {root / 'index.csv'} does not exist (not a Broden folder)")
        self.root = root
        self.name = f"broden:{root.name}"
        available = [row["name"] for row in _csv_rows(root / "category.csv")]
        if categories is not None:
            unknown = [c for c in categories if c not in available]
            if unknown:
                raise ConceptError(
                    f"dissection.concepts.categories: {', '.join(unknown)} not in {root / 'category.csv'} "
                    f"(categories: {', '.join(available)})"
                )
        self.categories = list(categories) if categories is not None else available
        label_rows = _csv_rows(root / "label.csv")
        rows = []
        for row in label_rows:
            number = row.get("number", "")
            if not number.isdigit() or int(number) == 0:
                continue
            category = _primary_category(row.get("category", ""), root / "label.csv", number)
            if category in self.categories:
                rows.append((int(number), row["name"], category))
        self.concepts = pd.DataFrame(rows, columns=["code", "name", "category"]).sort_values("code")
        self.concepts = self.concepts.reset_index(drop=True)
        max_code = max([int(r["number"]) for r in label_rows if r.get("number", "").isdigit()], default=0)
        self._keep = np.zeros(max(max_code, 0) + 1, dtype=bool)  # codes outside the chosen categories -> 0
        self._keep[self.concepts["code"].to_numpy()] = True
        index_rows = _csv_rows(root / "index.csv")
        missing = [c for c in (*BRODEN_META, *self.categories) if index_rows and c not in index_rows[0]]
        if missing:
            raise ConceptError(f"{root / 'index.csv'}: missing columns {', '.join(missing)}")
        # Images annotated for none of the chosen categories carry nothing to count: left out.
        index_rows = [r for r in index_rows if any(r[c].strip() for c in self.categories)]
        if not index_rows:
            raise ConceptError(f"{root / 'index.csv'}: no image is annotated for {', '.join(self.categories)}")
        self.rows = [index_rows[i] for i in _draw(len(index_rows), size, seed)]
        self.image_ids = [f"broden/{r['image']}" for r in self.rows]
        sizes = {(int(r["sh"]), int(r["sw"])) for r in self.rows}
        if len(sizes) != 1:
            raise ConceptError(f"{root / 'index.csv'}: segmentations come in several sizes {sorted(sizes)}; need one")
        self.label_size = sizes.pop()
        self.max_layers = max(
            sum(1 for c in self.categories for e in r[c].split(";") if e.strip() and not e.strip().isdigit())
            for r in self.rows
        )

    def _path(self, relative: str, what: str) -> Path:
        """A file index.csv names under images/, refused (one line) if it leads outside the Broden folder."""
        path, reason = confined_path(self.root, f"images/{relative}")
        if reason is not None:
            raise ConceptError(f"Broden layout: {self.root / 'index.csv'} names {what} {relative!r}: {reason}")
        return path

    def image(self, index: int) -> Image.Image:
        path = self._path(self.rows[index]["image"], "image")
        if not path.is_file():
            raise ConceptError(f"Broden layout: image {path} (index.csv row {index}) does not exist")
        with Image.open(path) as image:
            return image.convert("RGB")

    def _decode(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise ConceptError(f"Broden layout: segmentation {path} does not exist")
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB")).astype(np.int32)
        codes = rgb[..., 0] + 256 * rgb[..., 1]
        if rgb.shape[:2] != self.label_size:
            raise ConceptError(f"{path}: size {rgb.shape[0]}x{rgb.shape[1]}, index.csv says {self.label_size}")
        codes[codes >= len(self._keep)] = 0
        return np.where(self._keep[codes], codes, 0).astype(np.int32)

    def annotation(self, index: int, shape: tuple[int, int] | None = None) -> Annotation:
        row = self.rows[index]
        shape = tuple(shape) if shape is not None else self.label_size
        layers, scalars, annotated = [], [], set()
        for category in self.categories:
            entries = [e for e in row[category].split(";") if e.strip()]
            if entries:
                annotated.add(category)
            for entry in entries:
                if entry.strip().isdigit():
                    code = int(entry)
                    if code < len(self._keep) and self._keep[code]:
                        scalars.append(code)
                else:
                    layers.append(resize_labels(self._decode(self._path(entry.strip(), "segmentation")), shape))
        pixels = np.stack(layers) if layers else np.zeros((0, *shape), dtype=np.int32)
        return Annotation(pixels=pixels.astype(np.int32), scalars=tuple(scalars), categories=frozenset(annotated))


def broden_root(source: dict, *, data_dir, resources_dir) -> Path:
    """The Broden folder: `root` if it exists, else the `url` archive downloaded (sha256-checked) and unpacked."""
    if source.get("root"):
        root = resolve(source["root"], data_dir)
        if root.is_dir():
            return root
        if not source.get("sha256"):
            raise ConceptError(
                f"dissection.concepts.root: folder {root} does not exist; set dissection.concepts.sha256 "
                f"to download {source.get('url') or BRODEN_URL}"
            )
    if not source.get("sha256"):
        raise ConceptError("dissection.concepts: a Broden source needs `root` (a local folder) or `sha256` (download)")
    unpacked = fetch_and_unpack(
        source.get("url") or BRODEN_URL,
        source["sha256"],
        Path(resources_dir) / "downloads" / "dissection",
        max_unpacked_gb=source.get("max_unpacked_gb", DEFAULT_MAX_UNPACKED_GB),
        limit_key="dissection.concepts.max_unpacked_gb",
    )
    return unpacked / source.get("subdir", "broden1_224")


def open_concepts(source: dict, *, data_dir, resources_dir, seed: int) -> ConceptDataset:
    """The concept source configured under `dissection.concepts`."""
    kind = source.get("kind", "camvid")
    size = source.get("size")
    if kind == "camvid":
        return CamVidConcepts(
            resolve(source["root"], data_dir), colors=source.get("colors", True), size=size, seed=seed
        )
    if kind == "broden":
        root = broden_root(source, data_dir=data_dir, resources_dir=resources_dir)
        return BrodenConcepts(root, categories=source.get("categories"), size=size, seed=seed)
    raise ConceptError(f"dissection.concepts.kind: {kind!r} is not one of camvid, broden")
