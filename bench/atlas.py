"""The atlas's evidence stages: units per second on this machine, peak memory, and a full ResNet-50 atlas projected.

    .venv/bin/python bench/atlas.py [--threads 2] [--cifar-images 300] [--imagenet-images 100] [--shard 64]
                                    [--actmax-steps 64] [--measure-steps 8] [--seeds 2]

Every stage is timed at its stage function, on activation stores extracted first (not timed):
  ResNet-56 `layer3` (64 units), --cifar-images CIFAR-10 images (objects, labelled):
    categories  `stages.run_categories` on all 64 units
    lesion      `stages.run_lesion` on all 64 units (layer3 feeds the global pool: the tail acts on stored means)
    top-N       `stages.run_top_n`: every unit's top-N from the peaks the extraction stored (once per layer)
    exemplars   `stages.run_exemplars` on all 64 units (Neuron Features and crops from the top-N table)
    indexes     `stages.run_indexes` on all 64 units: the class index alone (no network), then all four of nefesi's
                (nefesi's default 15-degree rotations: 28 probes per exemplar crop)
    actmax      `atlas.actmax.shard_actmax`, 16 units x --seeds seeds x --measure-steps steps (32 px: pixels)
  MobileNetV2 `features.18` (1,280 units), --imagenet-images each of faces, scenes, objects: the same stages on one
  shard of --shard units (top-N: the whole layer; indexes: the class index, then the colour index alone, since every
  probe of this layer is a whole image); actmax on 4 units (224 px: FFT with transforms).
Actmax is timed at --measure-steps steps and its per-unit time scaled linearly to --actmax-steps (the atlas setting;
the fixed cost of the final forward pass is scaled too, so the projection errs slow).

The projection of a full ResNet-50 atlas (every unit of layer1-layer4: 256 + 512 + 1,024 + 2,048 = 3,840 units, on
the default MobileNetV2 target's datasets: 1,000 faces, 500 scenes, 500 objects) uses per-layer costs measured on
torchvision's ResNet-50 with random weights (the cost of a forward or backward pass does not depend on the weights):
actmax per unit and step (2 units x --seeds seeds, 3 steps: the final forward pass counted in, so it errs slow),
lesion per condition and image (4 units' lesions and the intact output on 16 face images, through the exact tail),
and a forward pass per image up to the layer. The categories and exemplar-shard stages take MobileNetV2's measured
per-unit rates (they do not run the network; categories scaled by the image count); the top-N pass and the extraction
take MobileNetV2's measured time, scaled by ResNet-50's forward cost per image over MobileNetV2's. Not projected: a
GPU (none here), and the exemplar shards' dependence on field size (ResNet-50's layer1 crops are far smaller).
Cluster: every shard of --shard units of each stage is one job (plus one top-N job per layer), each as fast as this
machine and with 10 s of job start-up (bench/job_startup.py: 5-9.5 s for jobs that run a network), spread over N
jobs at once by longest-first scheduling (dependencies ignored: the top-N pass before its layer's exemplar shards).
Peak memory: the process's peak RSS so far (resource.getrusage), printed after each stage.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import resource
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
from benchutil import Clock  # noqa: E402

RESNET50_LAYERS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
FULL_IMAGES = 2000  # the default MobileNetV2 target's datasets: faces 1,000 + scenes 500 + objects 500
JOB_START_S = 10.0
IMAGENET = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(rows: list, model: str, stage: str, units: int, run) -> float:
    """Run `run()`, print and record its wall and CPU seconds and units per second; returns the wall seconds."""
    clock = Clock()
    run()
    wall, cpu = clock.stop()
    rows.append({"model": model, "stage": stage, "units": units, "wall": wall, "cpu": cpu, "peak": peak_gb()})
    print(
        f"  {model:<24} {stage:<11} {units:>5} units  {wall:8.2f} s wall  {cpu:8.2f} s CPU  "
        f"{units / wall:9.2f} units/s  peak RSS so far {peak_gb():.2f} GB",
        flush=True,
    )
    return wall


def prepare_target(config, tmp: Path, name: str, layer: str, sizes: dict) -> dict:
    """Manifests and activation stores (one extraction pass per dataset, timed apart) of one target."""
    from unitscope.data.manifest import run_manifest
    from unitscope.extract import run_extraction
    from unitscope.runtime import RunSettings
    from unitscope.settings import ModelRef

    model = ModelRef.from_config(config, name)
    files = {"stores": [], "manifests": []}
    clock = Clock()
    for dataset, size in sizes.items():
        manifest = tmp / f"{name}/manifests/{dataset}.parquet"
        run_manifest(
            dataset,
            {**config["datasets"][dataset], "size": size},
            seed=config["seed"],
            data_dir=config["data_dir"],
            resources_dir=tmp / "resources",
            out_path=manifest,
        )
        stores = run_extraction(
            model,
            dataset_name=dataset,
            manifest_path=manifest,
            layers={layer: False},
            out_dir=tmp / f"{name}/activations/{dataset}",
            run=RunSettings(device="cpu", batch_size=64, num_workers=0),
        )
        files["stores"].append(str(stores[layer]))
        files["manifests"].append(str(manifest))
    wall, _ = clock.stop()
    print(f"  {name}: extraction of {sum(sizes.values())} images (not an atlas stage) {wall:.1f} s", flush=True)
    return {"model": model, "files": files, "extract_s": wall, "images": sum(sizes.values())}


def shard_settings(config, name: str, layer: str, datasets, start: int, stop: int, labelled=()) -> SimpleNamespace:
    """What the stage functions read of their settings (atlas.plan builds the real ones), with the schema defaults."""
    return SimpleNamespace(
        model=name,
        layer=layer,
        datasets=tuple(datasets),
        categories=tuple(config["datasets"][d]["category"] for d in datasets),
        start=start,
        stop=stop,
        n_bootstrap=2000,
        seed=config["seed"],
        ablation="mean",
        labelled=tuple(labelled),
        top_n=50,
        shown=8,
        pixels=128,
    )


def run_only(stage, run) -> dict:
    """`run=` for a stage function that takes its run-only settings (the atlas's stages are still changing)."""
    import inspect

    return {"run": run} if "run" in inspect.signature(stage).parameters else {}


def evidence_stages(rows: list, prepared: dict, settings, out: Path, label: str, index_kinds=()) -> None:
    """categories, lesion, top-N (whole layer), exemplars and nefesi's indexes `index_kinds` (the shard; the class
    index alone as well) through their stage functions."""
    from unitscope.runtime import RunSettings
    from unitscope.studies.atlas import stages

    run = RunSettings(device="cpu", batch_size=64, num_workers=0)
    model, files, units = prepared["model"], prepared["files"], settings.stop - settings.start
    timed(rows, label, "categories", units, lambda: stages.run_categories(settings, **files, out_table=out / "c.pq"))
    timed(
        rows,
        label,
        "lesion",
        units,
        lambda: stages.run_lesion(settings, model, **files, out_table=out / "l.pq", run=run),
    )
    table, geometry = out / "top_n.parquet", out / "top_n.json"
    n_units = prepared["channels"]

    def top_n():
        stages.run_top_n(settings, model, **files, out_table=table, out_geometry=geometry)

    timed(rows, label, "top-N", n_units, top_n)

    def exemplars():
        stages.run_exemplars(
            settings,
            table=table,
            geometry=geometry,
            manifests=files["manifests"],
            out_images=out / "exemplars.npz",
            out_table=out / "exemplars.pq",
            **run_only(stages.run_exemplars, run),
        )

    timed(rows, label, "exemplars", units, exemplars)
    for kinds in (("class",), tuple(index_kinds)) if index_kinds else (("class",),):
        index_settings = index_shard_settings(settings, kinds)
        timed(
            rows,
            label,
            f"indexes: {' + '.join(kinds)}",
            units,
            lambda s=index_settings: stages.run_indexes(
                s, model, table=table, manifests=files["manifests"], out_table=out / "i.pq", run=run
            ),
        )


def index_shard_settings(settings, kinds) -> SimpleNamespace:
    """The indexes stage's settings: the shard's, nefesi's definitions from the default config, CIFAR-10's names."""
    from unitscope.config import dataset_label_names, load_config
    from unitscope.studies.atlas.plan import INDEX_DEFINITIONS

    config = load_config(REPO / "config" / "config.yaml")
    definitions = {key: config["nefesi"][key] for key in INDEX_DEFINITIONS}
    names = dataset_label_names(config, settings.datasets)
    return SimpleNamespace(**vars(settings), kinds=tuple(kinds), definitions=definitions, label_names=names)


def actmax_stage(rows: list, prepared: dict, layer: str, units: int, args, label: str) -> None:
    """`shard_actmax` on the first `units` units at --measure-steps steps; the row holds the per-unit time scaled to
    --actmax-steps."""
    from unitscope.models.registry import load_model
    from unitscope.studies.atlas.actmax import shard_actmax

    model = prepared["model"]
    network = load_model(model)
    wall = timed(
        rows,
        label,
        f"actmax@{args.measure_steps}",
        units,
        lambda: shard_actmax(
            network, model.spec["preprocessing"], layer, range(units), seeds=args.seeds, steps=args.measure_steps
        ),
    )
    scale = args.actmax_steps / args.measure_steps
    rows.append({**rows[-1], "stage": "actmax", "wall": wall * scale, "cpu": rows[-1]["cpu"] * scale})
    print(
        f"  {label:<24} actmax at {args.actmax_steps} steps (scaled): {units / (wall * scale):.3f} units/s", flush=True
    )


def forward_seconds(network, layer: str, preprocessing, images: int = 16) -> float:
    """Seconds per image of one plain forward pass up to `layer` (batches of `images` 224-px inputs, best of 2)."""
    import torch

    from unitscope.hooks import ActivationRecorder

    size = (images, 3, *([preprocessing["crop"]] * 2))
    best = math.inf
    with ActivationRecorder(network, [layer], stop_early=True) as recorder, torch.inference_mode():
        for _ in range(2):
            clock = Clock()
            recorder(torch.rand(size))
            best = min(best, clock.stop()[0])
    return best / images


def subset_manifest(manifest: str, out: Path, images: int) -> Path:
    """The first `images` included rows of a manifest, as a manifest of their own."""
    import pandas as pd

    rows = pd.read_parquet(manifest)
    rows[rows["included"]].head(images).to_parquet(out, index=False)
    return out


def resnet50_costs(manifest: Path, args) -> dict:
    """Per layer of torchvision's ResNet-50 (random weights, 224 px): actmax seconds per unit and step (--seeds seeds),
    lesion seconds per condition and image (the exact tail), forward seconds per image up to the layer."""
    import numpy as np
    import pandas as pd
    import torchvision

    from unitscope.interventions.conditions import ablation_fill
    from unitscope.interventions.tail import build_tail, layer_cache
    from unitscope.studies.atlas.actmax import shard_actmax
    from unitscope.studies.atlas.lesion import lesion_outputs

    network = torchvision.models.resnet50(weights=None).eval().requires_grad_(False)
    ids = pd.read_parquet(manifest)["image_id"].to_numpy(dtype=object)
    costs = {}
    for layer, channels in RESNET50_LAYERS.items():
        clock = Clock()
        shard_actmax(network, IMAGENET, layer, range(2), seeds=args.seeds, steps=3)
        actmax = clock.stop()[0] / (2 * 3)
        tail = build_tail(network, layer, "resnet50")
        means = np.zeros((len(ids), channels), dtype=np.float32)  # read only when the tail starts with the pool
        cache, image_means = layer_cache(network, tail, means, ids, {"faces": str(manifest)}, IMAGENET)
        clock = Clock()
        lesion_outputs(tail, cache, ablation_fill("mean", image_means), np.arange(4))
        lesion = clock.stop()[0] / ((4 + 1) * len(ids))  # 4 units' lesions and the intact output
        costs[layer] = {"actmax": actmax, "lesion": lesion, "forward": forward_seconds(network, layer, IMAGENET)}
        print(
            f"  resnet50 {layer}: actmax {actmax:.3f} s per unit-step ({args.seeds} seeds), lesion "
            f"{lesion * 1000:.2f} ms per condition-image, forward {costs[layer]['forward'] * 1000:.1f} ms per image",
            flush=True,
        )
    return costs


def makespan(jobs: list[float], workers: int) -> float:
    """Wall seconds of `jobs` spread over `workers` at once, longest first, each also paying the job start-up."""
    loads = [0.0] * workers
    for job in sorted(jobs, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + job + JOB_START_S)
    return max(loads)


def measured_rates(rows: list, prepared: dict, forward: float) -> dict:
    """MobileNetV2's rates that the projection carries over to ResNet-50 (see the module docstring)."""
    stage = {row["stage"]: row for row in rows if row["model"].startswith("mobilenet")}
    images = prepared["images"]
    return {
        "categories_unit_images": stage["categories"]["units"] * images / stage["categories"]["wall"],
        "exemplars_units": stage["exemplars"]["units"] / stage["exemplars"]["wall"],
        "top_n_per_image": stage["top-N"]["wall"] / images,
        "extract_per_image": prepared["extract_s"] / images,
        "forward": forward,
    }


def resnet50_jobs(rates: dict, costs: dict, args) -> dict[str, dict[str, list[float]]]:
    """Projected seconds of every job of a full ResNet-50 atlas, per layer and stage (one job per shard)."""
    jobs = {}
    for layer, units in RESNET50_LAYERS.items():
        cost = costs[layer]
        per_unit = {
            "categories": FULL_IMAGES / rates["categories_unit_images"],
            "exemplars": 1 / rates["exemplars_units"],
            "actmax": args.actmax_steps * cost["actmax"],
        }
        shards = [min(args.shard, units - start) for start in range(0, units, args.shard)]
        jobs[layer] = {stage: [n * seconds for n in shards] for stage, seconds in per_unit.items()}
        jobs[layer]["lesion"] = [(n + 1) * FULL_IMAGES * cost["lesion"] for n in shards]  # + the intact output
        jobs[layer]["top-N"] = [rates["top_n_per_image"] * FULL_IMAGES * cost["forward"] / rates["forward"]]
    full_pass = rates["extract_per_image"] * costs["layer4"]["forward"] / rates["forward"]
    jobs["all layers"] = {"extraction": [full_pass * n for n in (1000, 500, 500)]}  # one job per dataset
    return jobs


def print_projection(jobs: dict, args) -> None:
    stages = ["categories", "lesion", "top-N", "exemplars", "actmax"]
    print(
        f"\nProjection (not a measurement): full ResNet-50 atlas, {sum(RESNET50_LAYERS.values())} units, "
        f"{FULL_IMAGES} images, actmax {args.seeds} seeds x {args.actmax_steps} steps, shards of {args.shard}"
    )
    print(f"  {'layer':<10}" + "".join(f"{s:>12}" for s in stages) + f"{'extraction':>12}{'total h':>10}")
    every = []
    for layer, kinds in jobs.items():
        hours = {kind: sum(values) / 3600 for kind, values in kinds.items()}
        every += [seconds for values in kinds.values() for seconds in values]
        cells = "".join(f"{hours[s]:>11.2f}h" if s in hours else f"{'':>12}" for s in [*stages, "extraction"])
        print(f"  {layer:<10}{cells}{sum(hours.values()):>9.2f}h")
    without_actmax = [s for layer in jobs.values() for kind, v in layer.items() if kind != "actmax" for s in v]
    print(
        f"  this CPU ({args.threads} threads), one job after another: {sum(every) / 3600:.1f} h "
        f"({sum(without_actmax) / 3600:.1f} h without actmax), {len(every)} jobs"
    )
    for workers in (16, 64):
        print(
            f"  {workers} cluster jobs at once, each like this CPU: {makespan(every, workers) / 3600:.2f} h "
            f"({makespan(without_actmax, workers) / 3600:.2f} h without actmax)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cifar-images", type=int, default=300)
    parser.add_argument("--imagenet-images", type=int, default=100, help="per dataset (faces, scenes, objects)")
    parser.add_argument("--shard", type=int, default=64, help="units per shard (atlas.units_per_shard)")
    parser.add_argument("--actmax-steps", type=int, default=64, help="the atlas's actmax steps the time is scaled to")
    parser.add_argument("--measure-steps", type=int, default=8, help="actmax steps actually run")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from unitscope.config import load_config
    from unitscope.models.registry import load_model

    torch.set_num_threads(args.threads)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (seconds): not timed
    config = load_config(REPO / "config" / "config.yaml")
    gpu = "a GPU is visible but not used" if torch.cuda.is_available() else "no GPU on this machine"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"CPU only ({gpu}), {args.threads} torch threads, {os.cpu_count()} cores, load average {load}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        tmp = Path(temp)
        cifar = prepare_target(config, tmp, "resnet56_cifar", "layer3", {"objects": args.cifar_images})
        cifar["channels"] = 64
        settings = shard_settings(config, "resnet56_cifar", "layer3", ["objects"], 0, 64, labelled=["objects"])
        kinds = ("colour", "orientation", "symmetry", "class")
        evidence_stages(rows, cifar, settings, tmp / "resnet56", "resnet56_cifar layer3", kinds)
        actmax_stage(rows, cifar, "layer3", 16, args, "resnet56_cifar layer3")
        sizes = dict.fromkeys(("faces", "scenes", "objects"), args.imagenet_images)
        imagenet = prepare_target(config, tmp, "mobilenet_v2_imagenet", "features.18", sizes)
        imagenet["channels"] = 1280
        settings = shard_settings(config, "mobilenet_v2_imagenet", "features.18", list(sizes), 0, args.shard)
        # colour only: every probe of this layer is a whole image (a full forward pass), 2 per exemplar image here and
        # 29 with all four indexes (rotations and mirrors scale the same way)
        evidence_stages(rows, imagenet, settings, tmp / "mobilenet", "mobilenet_v2 features.18", ("colour",))
        actmax_stage(rows, imagenet, "features.18", 4, args, "mobilenet_v2 features.18")
        preprocessing = imagenet["model"].spec["preprocessing"]
        forward = forward_seconds(load_model(imagenet["model"]), "features.18", preprocessing)
        print(f"  mobilenet_v2 features.18: forward {forward * 1000:.1f} ms per image", flush=True)
        faces = subset_manifest(imagenet["files"]["manifests"][0], tmp / "faces16.parquet", 16)
        costs = resnet50_costs(faces, args)
        print_projection(resnet50_jobs(measured_rates(rows, imagenet, forward), costs, args), args)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"peak RSS of the whole run: {peak_gb():.2f} GB; load average at the end {load}")


if __name__ == "__main__":
    main()
