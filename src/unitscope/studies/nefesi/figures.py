"""Figures of the nefesi study: Neuron Feature grids, index histograms, top channels per index, image and
hierarchical decompositions, and one figure per singled-out unit (its NF beside its top exemplar crops). Every
figure states the sample sizes it rests on."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unitscope.fsutil import atomic_path  # noqa: E402

INDEX_COLUMNS = {
    "color": "color_index",
    "orientation": "orientation_index",
    "symmetry": "symmetry_index",
    "class": "class_index",
}
ORDER_COLUMNS = {**INDEX_COLUMNS, "activation": "top_activation", "channel": "channel"}


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(np.clip(image.astype(np.float32), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def channel_order(table: pd.DataFrame, order_by: str) -> np.ndarray:
    """Channels sorted by `order_by` (an index, top activation, or channel number), best first, NaN last."""
    column = ORDER_COLUMNS[order_by]
    if order_by == "channel":
        return table["channel"].to_numpy()
    values = table[column].to_numpy(dtype=float)
    return table["channel"].to_numpy()[np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")]


def nf_grid_figure(nf: np.ndarray, table: pd.DataFrame, order_by: str, title: str, path) -> None:
    """All Neuron Features of a layer, ordered by `order_by`, each labelled with channel and value."""
    order = channel_order(table, order_by)
    count = len(order)
    columns = min(16, math.ceil(math.sqrt(count * 1.5)))
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.05 * columns, 1.2 * rows + 0.6), squeeze=False)
    values = table.set_index("channel")[ORDER_COLUMNS[order_by]]
    for ax in axes.ravel():
        ax.axis("off")
    for ax, channel in zip(axes.ravel(), order, strict=False):
        ax.axis("on")
        _show(ax, nf[channel])
        value = values.loc[channel]
        label = (
            f"{channel}"
            if order_by == "channel"
            else f"{channel}: {value:.2f}"
            if np.isfinite(value)
            else f"{channel}: –"
        )
        ax.set_title(label, fontsize=6, pad=2)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def top_channels_figure(nf: np.ndarray, table: pd.DataFrame, title: str, path, count: int = 8) -> None:
    """For each index, the `count` channels with the highest value, with their NFs."""
    fig, axes = plt.subplots(
        len(INDEX_COLUMNS), count, figsize=(1.2 * count + 1.2, 1.45 * len(INDEX_COLUMNS) + 0.5), squeeze=False
    )
    for row, (name, column) in enumerate(INDEX_COLUMNS.items()):
        order = channel_order(table, name)[:count]
        for col in range(count):
            ax = axes[row, col]
            if col >= len(order):
                ax.axis("off")
                continue
            channel = order[col]
            record = table.set_index("channel").loc[channel]
            _show(ax, nf[channel])
            value = record[column]
            extra = (
                f"\n{record['top_class']}"
                if name == "class"
                else (
                    f"\n{record['dominant_color']}"
                    if name == "color"
                    else (
                        f"\n{record['preferred_angle']:.0f}°"
                        if name == "orientation" and np.isfinite(record["preferred_angle"])
                        else ""
                    )
                )
            )
            ax.set_title(f"c{channel}: {value:.2f}{extra}", fontsize=6, pad=2)
        axes[row, 0].set_ylabel(f"{name}\nindex", fontsize=8)
        axes[row, 0].axis("on")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def histograms_figure(tables: dict[str, pd.DataFrame], title: str, path) -> None:
    """Rows: layers; columns: the four indexes; each a histogram over channels with its mean and n."""
    layers = list(tables)
    fig, axes = plt.subplots(len(layers), len(INDEX_COLUMNS), figsize=(11, 2.0 * len(layers) + 0.6), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for row, layer in enumerate(layers):
        table = tables[layer]
        for col, (name, column) in enumerate(INDEX_COLUMNS.items()):
            ax = axes[row, col]
            values = table[column].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            ax.hist(values, bins=bins, color="#4477aa")
            if len(values):
                ax.axvline(values.mean(), color="#cc6677", lw=1.2, label=f"mean {values.mean():.2f}")
                ax.legend(fontsize=6, loc="upper right")
            ax.set_xlim(0, 1)
            ax.set_title(f"{layer} · {name} (n = {len(values)} channels)", fontsize=7)
            ax.set_xlabel(f"{name} index", fontsize=7)
            ax.set_ylabel("channels", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def paste_nf(canvas: np.ndarray, nf: np.ndarray, field, extent, y: int, x: int) -> tuple[int, int, int, int]:
    """Paste a unit's NF (cut to the field's visible extent) where the unit's field lies in the image; return the
    pasted box (top, left, bottom, right)."""
    (row0, _), (col0, _) = extent
    top, left, _, _ = field.box(y, x)
    top, left = top + row0, left + col0
    height, width = nf.shape[:2]
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + height, canvas.shape[0]), min(left + width, canvas.shape[1])
    if t1 > t0 and l1 > l0:
        canvas[t0:t1, l0:l1] = nf[t0 - top : t1 - top, l0 - left : l1 - left]
    return t0, l0, t1, l1


def decomposition_figure(image: np.ndarray, kept: list[dict], nf: np.ndarray, field, extent, title: str, path) -> None:
    """The image, and the image with the NFs of its most relevant channels placed on their fields."""
    canvas = image.copy() * 0.35 + 0.65 * image.mean()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 4.4))
    _show(left, image)
    left.set_title("input (model's preprocessed view)", fontsize=8)
    boxes = []
    for item in reversed(kept):  # strongest pasted last, on top
        boxes.append((item, paste_nf(canvas, nf[item["channel"]], field, extent, item["y"], item["x"])))
    _show(right, canvas)
    for item, (t0, l0, t1, l1) in boxes:
        right.add_patch(plt.Rectangle((l0 - 0.5, t0 - 0.5), l1 - l0, t1 - t0, fill=False, color="#ffdd00", lw=0.8))
        right.text(
            l0,
            t0,
            f"c{item['channel']} {item['relative']:.2f}",
            fontsize=5.5,
            color="black",
            va="top",
            bbox={"facecolor": "#ffdd00", "alpha": 0.8, "pad": 0.6, "lw": 0},
        )
    right.set_title(f"{len(kept)} channels: NF on the field, label = activation / channel's top", fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def unit_figure(nf: np.ndarray, crops: np.ndarray, labels: list[str], title: str, path, columns: int = 4) -> None:
    """One unit: its Neuron Feature (left, spanning the rows) beside its exemplar crops in rank order, labelled."""
    count = len(crops)
    columns = max(1, min(columns, count))
    rows = max(2, math.ceil(count / columns))
    fig = plt.figure(figsize=(1.3 * (rows + columns) + 0.3, 1.45 * rows + 0.8))
    grid = fig.add_gridspec(rows, rows + columns, wspace=0.15, hspace=0.45)
    ax = fig.add_subplot(grid[:, :rows])
    _show(ax, nf)
    ax.set_title("Neuron Feature", fontsize=8)
    for index, (crop, label) in enumerate(zip(crops, labels, strict=True)):
        ax = fig.add_subplot(grid[index // columns, rows + index % columns])
        _show(ax, crop)
        ax.set_title(label, fontsize=6, pad=2)
    fig.suptitle(title, fontsize=8)
    _save(fig, path)


def _tree_layout(tree: dict) -> list[dict]:
    """Nodes with (depth, x in [0, 1]) positions; leaves spread evenly."""
    leaves = []

    def count(node):
        if not node["children"]:
            leaves.append(node)
            return 1
        return sum(count(child) for child in node["children"])

    count(tree)
    total = max(len(leaves), 1)
    placed = []
    cursor = [0]

    def place(node, depth, parent):
        if node["children"]:
            children = [place(child, depth + 1, None) for child in node["children"]]
            x = float(np.mean([c["x"] for c in children]))
        else:
            x = (cursor[0] + 0.5) / total
            cursor[0] += 1
            children = []
        record = {"node": node, "depth": depth, "x": x, "children": children}
        placed.append(record)
        return record

    place(tree, 0, None)
    return placed


def hierarchy_figure(tree: dict, nfs: dict[str, np.ndarray], title: str, path) -> None:
    """A deep channel's NF on top, the shallower channels most active on its exemplars below, edge = weight."""
    placed = _tree_layout(tree)
    depth = max(p["depth"] for p in placed) + 1
    leaves = sum(1 for p in placed if not p["children"])
    fig = plt.figure(figsize=(max(5.0, 1.0 * leaves + 1), 1.9 * depth + 0.6))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    size = min(0.8 / max(leaves, 1), 0.55 / depth)

    def centre(record):
        return record["x"], 1 - (record["depth"] + 0.5) / depth

    for record in placed:
        x, y = centre(record)
        for child in record["children"]:
            cx, cy = centre(child)
            ax.plot([x, cx], [y - size * 0.55, cy + size * 0.65], color="#888888", lw=0.8)
            weight = child["node"]["weight"]
            ax.text(
                (x + cx) / 2,
                (y - size * 0.55 + cy + size * 0.65) / 2,
                f"{weight:.2f}",
                fontsize=6,
                ha="center",
                va="center",
                bbox={"facecolor": "white", "lw": 0, "pad": 0.5},
            )
        inset = fig.add_axes([x - size / 2, y - size / 2, size, size])
        node = record["node"]
        _show(inset, nfs[node["layer"]][node["channel"]])
        inset.set_title(f"{node['layer']} c{node['channel']}", fontsize=6, pad=1.5)
    ax.text(0.01, 0.995, title, fontsize=8, va="top")
    _save(fig, path)


# ----------------------------------------------------------------------------------------------
# stages (called by workflow/scripts/nefesi_*.py)


def _load_nf(path) -> np.ndarray:
    with np.load(path) as data:
        return data["nf"].astype(np.float32)


def model_inputs(rows: pd.DataFrame, preprocessing: dict):
    """The images of `rows` (rows of a target's image table) as the model saw them in the top-N pass: resized,
    centre-cropped and normalised, [len(rows), 3, H, W]."""
    import torch

    from unitscope.data.manifest import ManifestDataset
    from unitscope.models.registry import build_transform

    dataset = ManifestDataset(rows, build_transform(preprocessing))
    if not len(dataset):
        crop = int(preprocessing["crop"])
        return torch.zeros(0, 3, crop, crop)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def layer_field(info: dict):
    """The receptive field a layer's layer.json records."""
    from unitscope.models.receptive_field import ReceptiveField

    field = info["receptive_field"]
    return ReceptiveField(tuple(field["size"]), tuple(field["stride"]), tuple(field["offset"]))


def exemplar_crops(images, field, ys, xs, extent, mean, std) -> np.ndarray:
    """The crops a Neuron Feature averages: unit (y, x)'s field, cut to the layer's visible `extent` (layer.json
    nf_extent), from its model-input image (normalised [k, 3, H, W]), mean colour where the field leaves the image
    (the same cut as nefesi_probes.probe_layer). sRGB [k, h, w, 3] in [0, 1], as the NFs in nf.npz."""
    from unitscope.studies.nefesi.indexes import nf_rgb
    from unitscope.studies.nefesi.probes import gather_crops

    boxes = np.array([field.box(int(y), int(x)) for y, x in zip(ys, xs, strict=True)], dtype=np.int64).reshape(-1, 4)
    (row0, row1), (col0, col1) = extent
    crops = gather_crops(
        images.float(),
        np.arange(len(images)),
        boxes[:, 0],
        boxes[:, 1],
        np.arange(row0, row1),
        np.arange(col0, col1),
    )
    return nf_rgb(crops, mean, std)


def unit_figure_name(model_name: str, layer: str, channel: int) -> str:
    """File name of a unit's figure: its page's name (sections.unit_page_name) with .png."""
    from unitscope.report.sections import unit_page_name

    return unit_page_name(model_name, layer, channel).removesuffix(".html") + ".png"


def run_unit_figures(
    *,
    model_name: str,
    units: list[tuple[str, int]],
    exemplars_path,
    images_path,
    nf_paths: dict,
    infos: dict[str, dict],
    preprocessing: dict,
    count: int,
    out_dir,
) -> dict[tuple[str, int], dict]:
    """For each (layer, channel) in `units`: its NF beside its top `count` exemplar crops, written to
    out_dir/<model>__<layer>__<channel>.png. Returns per unit the file name, the exemplars its NF averages and the
    number of crops shown."""
    from pathlib import Path

    exemplars = pd.read_parquet(exemplars_path)
    images = pd.read_parquet(images_path).set_index("image", drop=False)
    mean, std = preprocessing["mean"], preprocessing["std"]
    drawn = {}
    for layer in dict.fromkeys(layer for layer, _ in units):
        info = infos[layer]
        nf = _load_nf(nf_paths[layer])
        field = layer_field(info)
        rows = exemplars[(exemplars["layer"] == layer) & (exemplars["image"] >= 0)]
        for channel in dict.fromkeys(channel for unit_layer, channel in units if unit_layer == layer):
            own = rows[rows["channel"] == channel].sort_values("rank")
            positive = own["activation"].clip(lower=0)
            weights = positive / positive.sum() if positive.sum() > 0 else positive * 0
            shown = own.head(count)
            pictures = images.loc[shown["image"].to_numpy()]
            crops = exemplar_crops(
                model_inputs(pictures, preprocessing), field, shown["y"], shown["x"], info["nf_extent"], mean, std
            )
            labels = [
                f"#{rank + 1} a={activation:.2f} w={weight:.2f}\n{str(name)[:18]}"
                for rank, activation, weight, name in zip(
                    shown["rank"], shown["activation"], weights.loc[shown.index], pictures["class"], strict=True
                )
            ]
            size = info["receptive_field"]["size"]
            title = (
                f"{model_name} {layer} channel {channel}: NF = activation-weighted mean of its top {len(own)} crops "
                f"(of {info['images']} images), field {size[0]}×{size[1]} px;\ntop {len(shown)} crops, "
                "a = activation, w = weight in the NF, class of the image"
            )
            name = unit_figure_name(model_name, layer, channel)
            unit_figure(nf[channel], crops, labels, title, Path(out_dir) / name)
            drawn[(layer, int(channel))] = {"file": name, "exemplars": len(own), "shown": len(shown)}
    return drawn


def run_layer_figures(*, table_path, nf_path, info_path, order_by: str, top_channels: int, out_grid, out_top) -> None:
    """NF grid of one layer (ordered by `order_by`) and its top channels for each index."""
    import json

    table = pd.read_parquet(table_path)
    nf = _load_nf(nf_path)
    info = json.loads(open(info_path).read())
    field = info["receptive_field"]["size"]
    base = (
        f"{info['model']} · {info['layer']}: {info['channels']} channels, NF = weighted mean of the top "
        f"{info['top_n']} of {info['images']} images, field {field[0]}×{field[1]} px"
    )
    nf_grid_figure(
        nf,
        table,
        order_by,
        f"{base}\nordered by {order_by}" + (" index" if order_by in INDEX_COLUMNS else ""),
        out_grid,
    )
    top_channels_figure(nf, table, f"{base}\nhighest {top_channels} channels per index", out_top, count=top_channels)


def choose_hierarchy_channel(table: pd.DataFrame) -> int:
    """The deep channel to decompose when none is configured: highest class index, then highest top activation."""
    alive = table[~table["dead"]]
    if alive.empty:
        return int(table["channel"].iloc[0])
    ranked = alive.sort_values(["class_index", "top_activation"], ascending=False, na_position="last", kind="stable")
    return int(ranked["channel"].iloc[0])


def run_model_figures(
    *,
    model_name: str,
    layers: list[str],
    table_paths: list,
    nf_paths: list,
    hierarchy_paths: list,
    hierarchy_channel: int | None,
    children: int,
    out_histograms,
    out_hierarchy,
    out_tree,
) -> dict:
    """Index histograms of every layer and the hierarchical decomposition of one deep channel."""
    import json

    from unitscope.fsutil import write_text_atomic
    from unitscope.studies.nefesi.stages import NefesiError, hierarchy_tree

    tables = {layer: pd.read_parquet(path) for layer, path in zip(layers, table_paths, strict=True)}
    nfs = {layer: _load_nf(path) for layer, path in zip(layers, nf_paths, strict=True)}
    channels = {layer: len(table) for layer, table in tables.items()}
    n_text = ", ".join(f"{layer} {count}" for layer, count in channels.items())
    histograms_figure(tables, f"{model_name}: selectivity indexes per channel (channels: {n_text})", out_histograms)
    deep = layers[-1]
    if hierarchy_channel is None:
        channel, chosen = choose_hierarchy_channel(tables[deep]), "highest class index"
    else:
        channel, chosen = int(hierarchy_channel), "configured"
        if not 0 <= channel < channels[deep]:
            raise NefesiError(
                f"config key nefesi.targets ({model_name}).hierarchy_channel: {channel} is not a channel of {deep} "
                f"(0..{channels[deep] - 1})"
            )
    weights = {}
    for path in hierarchy_paths:
        frame = pd.read_parquet(path)
        if frame.empty:
            continue
        layer = frame["deep_layer"].iloc[0]
        matrix = np.zeros((frame["deep_channel"].max() + 1, frame["shallow_channel"].max() + 1))
        matrix[frame["deep_channel"], frame["shallow_channel"]] = frame["weight"]
        weights[layer] = matrix
    tree = hierarchy_tree(weights, layers, deep, channel, children)
    title = (
        f"{model_name} {deep} channel {channel} ({chosen}) and the {children} channels of each shallower layer "
        f"most active on its exemplars;\nedge = Σ w·(max over the unit's cone) / channel's top activation"
    )
    hierarchy_figure(tree, nfs, title, out_hierarchy)
    record = {"model": model_name, "layer": deep, "channel": channel, "chosen": chosen, "tree": tree}
    write_text_atomic(out_tree, json.dumps(record, indent=2) + "\n")
    return record


def run_decomposition(
    *,
    model_name: str,
    spec: dict,
    layer: str,
    dataset: str,
    index: int,
    images_path,
    exemplars_path,
    nf_path,
    info_path,
    channels: int,
    max_overlap: float,
    data_dir,
    torch_home,
    out_figure,
    out_record,
) -> dict:
    """Image decomposition of the `index`-th image of `dataset` in the target's image table at `layer`."""
    import json

    import torch

    from unitscope.fsutil import write_text_atomic
    from unitscope.hooks import ActivationRecorder
    from unitscope.models.receptive_field import receptive_field
    from unitscope.models.registry import build_model
    from unitscope.studies.nefesi.stages import NefesiError, decompose_image, inference_copy, nf_rgb, read_top_n

    images = pd.read_parquet(images_path)
    rows = images[images["dataset"] == dataset]
    if index >= len(rows):
        raise NefesiError(f"{images_path}: dataset {dataset!r} has {len(rows)} images, no image number {index}")
    row = rows.iloc[index].to_dict()
    model = inference_copy(build_model(model_name, spec, data_dir=data_dir, torch_home=torch_home))  # as top-N
    preprocessing = spec["preprocessing"]
    image = model_inputs(rows.iloc[[index]], preprocessing)[0]
    with (
        torch.inference_mode(),
        ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        recorder(image.unsqueeze(0).contiguous(memory_format=torch.channels_last))
    top = read_top_n(pd.read_parquet(exemplars_path), layer)
    field = receptive_field(model, layer)
    info = json.loads(open(info_path).read())
    kept = decompose_image(
        recorder.maps[layer][0],
        field,
        top.values[:, 0],
        tuple(image.shape[-2:]),
        count=channels,
        max_overlap=max_overlap,
    )
    picture = nf_rgb(image.unsqueeze(0), preprocessing["mean"], preprocessing["std"])[0]
    title = (
        f"{model_name} {layer}: {dataset} image {row['image_id']} (class {row['class']}); {len(kept)} units "
        f"ranked by activation / channel's top, field overlap ≤ {max_overlap:.2f}"
    )
    decomposition_figure(picture, kept, _load_nf(nf_path), field, info["nf_extent"], title, out_figure)
    record = {
        "model": model_name,
        "layer": layer,
        "dataset": dataset,
        "index": index,
        "image_id": row["image_id"],
        "class": row["class"],
        "units": [{k: v for k, v in item.items() if k != "area"} for item in kept],
    }
    write_text_atomic(out_record, json.dumps(record, indent=2) + "\n")
    return record
