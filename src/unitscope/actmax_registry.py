"""Optional stage: activation maximisation on a registry model (`unitscope.models.build_model`), channel level.

224-px ImageNet models use the FFT / decorrelated-colour parameterisation with random transforms (lucent's
approach), since plain pixels give high-frequency noise there; small inputs use plain pixels. Kept apart from
`actmax_study` so that the Colored-MNIST stages do not depend on the model registry's code.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch

from unitscope.actmax import UnitSpecs, optimize_inputs
from unitscope.actmax_study import save_run, save_unit_grids
from unitscope.fsutil import atomic_path
from unitscope.models import build_model

__all__ = ["run_registry_target"]


def run_registry_target(
    *, model_name, spec, target: Mapping, data_dir, torch_home, npz_path, table_path, images_dir, threads: int = 1
) -> pd.DataFrame:
    """Stage: channel-level actmax on a registry model (unitscope.models.build_model)."""
    torch.set_num_threads(max(1, int(threads)))
    model = build_model(model_name, spec, data_dir=data_dir, torch_home=torch_home)
    size = int(spec["preprocessing"]["crop"])
    parameterization = target["parameterization"]
    if parameterization == "auto":
        parameterization = "fft" if size >= 64 else "pixel"
    rows = [
        {"channel": c, "objective": o, "seed": s, "init": "gray_noise", "l2": target["l2"], "tv": target["tv"]}
        for c in target["channels"]
        for o in target["objectives"]
        for s in range(int(target["seeds"]))
    ]
    result = optimize_inputs(
        model,
        target["layer"],
        UnitSpecs.from_rows(rows),
        image_shape=(3, size, size),
        steps=int(target["steps"]),
        lr=float(target["lr"]),
        l2_center=0.5,
        parameterization=parameterization,
        transforms=parameterization == "fft",
        input_mean=spec["preprocessing"]["mean"],
        input_std=spec["preprocessing"]["std"],
    )
    table = save_run(result, npz_path, table_path, extra={"model": model_name, "parameterization": parameterization})
    with atomic_path(images_dir) as temp:
        temp.mkdir()
        save_unit_grids(table, result.snapshots, result.snapshot_steps, temp)
    print(
        f"{model_name} {target['layer']}: {len(rows)} runs ({parameterization}) in {result.seconds:.1f} s", flush=True
    )
    return table
