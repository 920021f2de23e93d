"""Figures of the nefesi study: Neuron Feature grids, index histograms, top channels per index, image and
hierarchical decompositions, and one figure per singled-out unit (its NF beside its top exemplar crops). Every
figure states the sample sizes it rests on. Drawing only: the stages (`stages`) read the files and compute what
is drawn; the one statistic drawn, a mean over channels with its 95% interval (`mean_interval`), is defined here so
that the histograms and the section state the same interval.

Sizes: at the report's 110 DPI every figure stays within the 960-px text column (at most `WIDTH` inches wide; long
titles are wrapped to the figure's width) and no text is smaller than `FONT` points."""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from unitscope.report.plotting import FIGURE_WIDTH, MIN_FONT, save_figure
from unitscope.stats import bootstrap_interval

INDEX_COLUMNS = {
    "color": "color_index",
    "orientation": "orientation_index",
    "symmetry": "symmetry_index",
    "class": "class_index",
}
ORDER_COLUMNS = {**INDEX_COLUMNS, "activation": "top_activation", "channel": "channel"}
WIDTH = FIGURE_WIDTH
FONT = MIN_FONT
RESAMPLES = 2000  # bootstrap resamples of a mean over channels


def mean_interval(values: np.ndarray, resamples: int = RESAMPLES) -> tuple[float | None, list[float] | None, int]:
    """Mean over channels (NaN left out), its 95% percentile-bootstrap interval and the channels it rests on
    (seeded: reproducible; it stays inside the index's [0, 1] range, unlike a normal approximation). The interval
    is None below two values, the mean too with none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = float(values.mean())
    if n < 2:
        return mean, None, n
    return mean, list(bootstrap_interval(values, np.random.default_rng(0), resamples)), n


def wrap(text: str, width_inches: float, size: float = FONT) -> str:
    """`text` with each line wrapped to fit `width_inches` at `size` points (about 0.55 em per character)."""
    chars = max(30, int(width_inches * 72 / (0.55 * size)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


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
    columns = max(1, min(10, math.ceil(math.sqrt(count * 1.5))))  # 10 columns of 0.82 in: within WIDTH
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(0.82 * columns, 1.05 * rows + 0.7), squeeze=False)
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
        ax.set_title(label, fontsize=FONT, pad=2)
    fig.suptitle(wrap(title, max(0.82 * columns, 5.0)), fontsize=FONT)
    save_figure(fig, path)


def top_channels_figure(nf: np.ndarray, table: pd.DataFrame, title: str, path, count: int = 8) -> None:
    """For each index, the `count` channels with the highest value, with their NFs."""
    side = min(1.0, (WIDTH - 0.9) / max(count, 1))  # inches per channel, the row labels beside them
    fig, axes = plt.subplots(
        len(INDEX_COLUMNS), count, figsize=(side * count + 0.9, 1.6 * len(INDEX_COLUMNS) + 0.7), squeeze=False
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
                f"\n{str(record['top_class'])[:12]}"
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
            ax.set_title(f"c{channel}: {value:.2f}{extra}", fontsize=FONT, pad=2)
        axes[row, 0].set_ylabel(f"{name}\nindex", fontsize=FONT)
        axes[row, 0].axis("on")
    fig.suptitle(wrap(title, side * count + 0.9), fontsize=FONT)
    save_figure(fig, path)


def histograms_figure(tables: dict[str, pd.DataFrame], title: str, path) -> None:
    """Rows: layers (shallow to deep); columns: the four indexes; each a histogram over channels with its mean and
    the mean's 95% interval (`mean_interval`, as the section states it) as a red line in a red band, and n."""
    layers = list(tables)
    fig, axes = plt.subplots(
        len(layers), len(INDEX_COLUMNS), figsize=(WIDTH, 2.2 * len(layers) + 0.8), sharex=True, squeeze=False
    )
    bins = np.linspace(0, 1, 21)
    for row, layer in enumerate(layers):
        for col, (name, column) in enumerate(INDEX_COLUMNS.items()):
            ax = axes[row, col]
            values = tables[layer][column].to_numpy(dtype=float)
            mean, interval, n = mean_interval(values)
            ax.hist(values[np.isfinite(values)], bins=bins, color="#4477aa")
            text = "no values" if mean is None else f"mean {mean:.2f}"
            if interval is not None:
                ax.axvspan(*interval, color="#cc6677", alpha=0.3, lw=0)
                text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
            if mean is not None:
                ax.axvline(mean, color="#cc6677", lw=1.5)
            ax.set_xlim(0, 1)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{name} · n = {n} channels\n{text}", fontsize=FONT)
            ax.tick_params(labelsize=FONT)
        axes[row, 0].set_ylabel(f"{layer}\nchannels", fontsize=FONT)
    for col, name in enumerate(INDEX_COLUMNS):
        axes[-1, col].set_xlabel(f"{name} index", fontsize=FONT)
    fig.suptitle(wrap(title, WIDTH), fontsize=FONT)
    fig.tight_layout()
    save_figure(fig, path)


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
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH, 4.6))
    _show(left, image)
    left.set_title("input (model's preprocessed view)", fontsize=FONT)
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
            fontsize=FONT,
            color="black",
            va="top",
            bbox={"facecolor": "#ffdd00", "alpha": 0.8, "pad": 0.6, "lw": 0},
        )
    right.set_title(f"{len(kept)} channels: NF on the field\nlabel = activation / channel's top", fontsize=FONT)
    fig.suptitle(wrap(title, WIDTH), fontsize=FONT)
    save_figure(fig, path)


def unit_figure(nf: np.ndarray, crops: np.ndarray, labels: list[str], title: str, path, columns: int = 4) -> None:
    """One unit: its Neuron Feature (left, spanning the rows) beside its exemplar crops in rank order, labelled."""
    count = len(crops)
    columns = max(1, min(columns, count))
    rows = max(2, math.ceil(count / columns))
    side = min(1.35, (WIDTH - 0.2) / (rows + columns))  # inches per crop
    width, height = side * (rows + columns) + 0.2, 1.6 * rows + 1.0
    title = wrap(title, width)
    top = 1 - (0.16 * (title.count("\n") + 1) + 0.45) / height  # room for the title and the top crops' labels
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(rows, rows + columns, wspace=0.15, hspace=0.6, top=top)
    ax = fig.add_subplot(grid[:, :rows])
    _show(ax, nf)
    ax.set_title("Neuron Feature", fontsize=FONT)
    for index, (crop, label) in enumerate(zip(crops, labels, strict=True)):
        ax = fig.add_subplot(grid[index // columns, rows + index % columns])
        _show(ax, crop)
        ax.set_title(label, fontsize=FONT, pad=2)
    fig.suptitle(title, fontsize=FONT)
    save_figure(fig, path)


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
    width = min(WIDTH, max(5.0, 1.0 * leaves + 1))
    fig = plt.figure(figsize=(width, 1.9 * depth + 0.9))
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
                fontsize=FONT,
                ha="center",
                va="center",
                bbox={"facecolor": "white", "lw": 0, "pad": 0.5},
            )
        inset = fig.add_axes([x - size / 2, y - size / 2, size, size])
        node = record["node"]
        _show(inset, nfs[node["layer"]][node["channel"]])
        inset.set_title(f"{node['layer']}\nc{node['channel']}", fontsize=FONT, pad=1.5)
    ax.text(0.01, 1.0, wrap(title, width), fontsize=FONT, va="bottom")
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# the study's figures, titled with what they rest on


def draw_layer_figures(
    table: pd.DataFrame, nf: np.ndarray, info: dict, *, order_by: str, top_channels: int, out_grid, out_top
) -> None:
    """NF grid of one layer (ordered by `order_by`) and its top channels for each index."""
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


def draw_histograms(model_name: str, tables: dict[str, pd.DataFrame], path) -> None:
    """The index histograms of a model's layers, titled with each layer's number of channels."""
    n_text = ", ".join(f"{layer} {len(table)}" for layer, table in tables.items())
    histograms_figure(tables, f"{model_name}: selectivity indexes per channel (channels: {n_text})", path)


def draw_hierarchy(model_name: str, record: dict, children: int, nfs: dict[str, np.ndarray], path) -> None:
    """The hierarchical decomposition `record` (hierarchy.json: layer, channel, chosen, tree)."""
    title = (
        f"{model_name} {record['layer']} channel {record['channel']} ({record['chosen']}) and the {children} channels "
        "of each shallower layer most active on its exemplars;\nedge = Σ w·(max over the unit's cone) / channel's "
        "top activation"
    )
    hierarchy_figure(record["tree"], nfs, title, path)


def draw_decomposition(
    picture: np.ndarray, kept: list[dict], nf: np.ndarray, field, extent, record: dict, *, max_overlap: float, path
) -> None:
    """The image decomposition `record` (its JSON record) of `picture` (sRGB [H, W, 3])."""
    title = (
        f"{record['model']} {record['layer']}: {record['dataset']} image {record['image_id']} (class "
        f"{record['class']}); {len(kept)} units ranked by activation / channel's top, field overlap ≤ "
        f"{max_overlap:.2f}"
    )
    decomposition_figure(picture, kept, nf, field, extent, title, path)


def unit_labels(shown: pd.DataFrame, weights: pd.Series, classes: pd.Series) -> list[str]:
    """The label of each exemplar crop shown beside a unit's NF: rank, activation, weight in the NF, class."""
    return [
        f"#{rank + 1} {str(name)[:12]}\na={activation:.2f} w={weight:.2f}"
        for rank, activation, weight, name in zip(shown["rank"], shown["activation"], weights, classes, strict=True)
    ]


def unit_title(model_name: str, layer: str, channel: int, info: dict, exemplars: int, shown: int) -> str:
    size = info["receptive_field"]["size"]
    return (
        f"{model_name} {layer} channel {channel}: NF = activation-weighted mean of its top {exemplars} crops "
        f"(of {info['images']} images), field {size[0]}×{size[1]} px;\ntop {shown} crops, "
        "a = activation, w = weight in the NF, class of the image"
    )
