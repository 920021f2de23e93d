"""Which units the dissection study shows: the top units of a layer's figure, and the units it singles out
(its table, their unit pages and per-unit figures), with the names of those figures."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

STUDY_UNITS_PER_LAYER = 3  # detectors per layer the section singles out (table, unit pages, per-unit figures)


def chosen_units(units: pd.DataFrame, n_units: int) -> pd.DataFrame:
    """The layer's units to show: highest best-concept IoU first."""
    return units.sort_values(["iou", "unit"], ascending=[False, True], kind="stable").head(n_units)


def study_units(units: pd.DataFrame, per_layer: int = STUDY_UNITS_PER_LAYER) -> pd.DataFrame:
    """The units the study singles out (its table, their unit pages and per-unit figures): in each (model, layer)
    the `per_layer` detectors with the highest IoU (ties: lower unit first); rows ordered by IoU, highest first."""
    detectors = units[units["detector"].astype(bool)]
    ordered = detectors.sort_values(["iou", "unit"], ascending=[False, True], kind="stable")
    return ordered.groupby(["model", "layer"], sort=False).head(per_layer)


def unit_image_name(model: str, layer: str, unit: int) -> str:
    """File name of one study unit's figure inside its layer's directory of unit figures."""
    return f"{model}__{layer}__{int(unit)}.png"


def check_unit_images(listed: list[dict], unit_image_dirs: dict[str, str | os.PathLike]) -> None:
    """Every listed unit's layer has a folder of per-unit figures, and each folder holds exactly the figures of
    the units the section lists for its layer."""
    without = sorted({f"{u['model']}/{u['layer']}" for u in listed} - set(unit_image_dirs))
    if without:
        raise ValueError(f"no folder of unit figures for {', '.join(without)}")
    for key, folder in unit_image_dirs.items():
        model, layer = key.split("/", 1)
        expected = {
            unit_image_name(model, layer, unit["channel"])
            for unit in listed
            if (unit["model"], unit["layer"]) == (model, layer)
        }
        found = {path.name for path in Path(folder).glob("*.png")}
        if found != expected:
            raise ValueError(
                f"{folder}: unit figures {sorted(found)} do not match the section's units of {model} {layer} "
                f"{sorted(expected)}"
            )
