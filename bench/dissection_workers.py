"""The dissection's independent pieces on the job's threads (issue 15): the rotation experiment's dissections one at
a time with torch's 2 intra-op threads (before) versus two at a time, one thread each (`runtime.parallel_map`, what
the stage does now), on the default config's CamVid frames; the rows must be identical. For comparison, the same for
a model's layers in the dissection stage (not done there: `features.18` alone is most of the work, and it runs
slower on one thread than the other layers take).

    .venv/bin/python bench/dissection_workers.py [--threads 2] [--repeat 2] [--skip-layers]

Prints wall and CPU seconds per mode and the ratios. The forward passes (one per model) run once, untimed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def timed(function) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare(name: str, run, threads: int, repeat: int) -> None:
    """run(workers) -> rows (JSON-able); one and `threads` workers alternately, `repeat` times each."""
    seen, times = {}, {1: [], threads: []}
    for _ in range(repeat):
        for workers in (1, threads):
            rows, wall, cpu = timed(lambda w=workers: run(w))
            times[workers].append((wall, cpu))
            seen.setdefault(workers, json.dumps(rows, default=float, sort_keys=True))
    same = seen[1] == seen[threads]
    for workers, runs in times.items():
        shown = ", ".join(f"{wall:.1f} s wall / {cpu:.1f} s CPU" for wall, cpu in runs)
        print(f"  {name}: {workers} at a time: {shown}")
    best = {workers: min(runs) for workers, runs in times.items()}
    print(
        f"  {name}: {best[1][0] / best[threads][0]:.2f}x faster wall, {best[1][1] / best[threads][1]:.2f}x less CPU "
        f"(best runs); rows identical: {same}"
    )
    if not same:
        raise SystemExit(f"{name}: the rows differ between 1 and {threads} workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-layers", action="store_true", help="time the rotation experiment only")
    args = parser.parse_args()

    import torch

    from unitscope.config import load_config
    from unitscope.data.concepts import mask_shape, open_concepts
    from unitscope.models.registry import build_model
    from unitscope.runtime import parallel_map
    from unitscope.studies.dissection.caches import cache_activations, cache_labels, dissection_transform
    from unitscope.studies.dissection.layer_dissection import dissect_cached_layer
    from unitscope.studies.dissection.rotation import rotation_rows

    config = load_config(REPO / "config" / "config.yaml")
    dissection, rotation = config["dissection"], config["dissection"]["rotation"]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        concepts = open_concepts(dissection["concepts"], data_dir=config["data_dir"], resources_dir=folder, seed=0)
        spec = config["models"][rotation["model"]]
        model = build_model(rotation["model"], spec, data_dir=config["data_dir"], torch_home=REPO / "resources/torch")
        layers = next(t["layers"] for t in dissection["targets"] if t["model"] == rotation["model"])
        caches = cache_activations(model, concepts, layers, dissection_transform(spec["preprocessing"]), folder)
        print(f"{rotation['model']} on {concepts.describe()}; {args.threads} threads", flush=True)
        labels = cache_labels(concepts, mask_shape(concepts.label_size, rotation["mask_size"]), folder)
        settings = {"quantile": dissection["quantile"], "iou_threshold": dissection["iou_threshold"]}

        def rotations(workers: int) -> list[dict]:
            return rotation_rows(
                caches[rotation["layer"]], labels, concepts, alphas=rotation["alphas"], seeds=rotation["seeds"],
                seed=config["seed"], folder=folder, workers=workers, **settings,
            )  # fmt: skip

        print(f"rotation experiment: {rotation['layer']}, alphas {rotation['alphas']}, {rotation['seeds']} seeds")
        compare("rotation", rotations, args.threads, args.repeat)
        if args.skip_layers:
            return
        (folder / "full").mkdir()
        full = cache_labels(concepts, mask_shape(concepts.label_size, dissection["mask_size"]), folder / "full")

        def layer_rows(workers: int) -> list[dict]:
            def one(depth: int) -> dict:
                done = dissect_cached_layer(
                    caches[layers[depth]], full, concepts, model_name=rotation["model"], layer=layers[depth],
                    depth=depth, top_k=dissection["top_images"], seed=config["seed"], **settings,
                )  # fmt: skip
                return done.row

            return parallel_map(one, list(range(len(layers))), workers)

        print(f"layers: {layers}, masks at label resolution")
        compare("layers", layer_rows, args.threads, args.repeat)


if __name__ == "__main__":
    main()
