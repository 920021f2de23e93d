"""The lesions study's class-units sweep versus one plain extraction pass of the same images.

    .venv/bin/python bench/class_units.py [--model resnet56_cifar] [--layer layer3] [--n 2000]
                                          [--sizes 1 2 4 8 16] [--draws 100] [--threads 2] [--device auto]

On `--n` real labelled CIFAR-10 images (seeded draw):
  extract  one plain extraction pass: `extract_to_zarr` over a DataLoader (decoding included)
  sweep    the class-units stage's network work: the layer's cache (the stored means when the layer feeds the
           global pool, else one pass computing the maps), every unit's own lesion on all images, then for each
           class and size k the k most selective and k most important units, lesioned and kept alone, each with
           `--draws` random and `--draws` activation-matched control sets (on the evaluation half), and the tables
           (scores, control comparisons, pooled p-values). Selectivity here is each unit's share of its per-class
           mean activation, a stand-in for nefesi's exemplar shares: which units are chosen does not change the cost.
Prints wall and CPU seconds, the conditions, the ratio sweep / extract (goal <= 2) and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
from benchutil import Clock  # noqa: E402


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet56_cifar")
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def labelled_images(config: dict, n: int, folder: Path):
    """A seeded draw of `n` CIFAR-10 images: (manifest path, manifest, labels)."""
    from unitscope.data.manifest import build_manifest, folder_layout
    from unitscope.studies.lesions.inputs import integer_labels

    spec = config["datasets"]["cifar10"]
    layout = folder_layout("cifar10", spec["source"], config["data_dir"])
    manifest = build_manifest("cifar10", spec["category"], layout, n, config["seed"])
    manifest = manifest[manifest["included"]].reset_index(drop=True)
    path = folder / "cifar10.parquet"
    manifest.to_parquet(path)
    return str(path), manifest, integer_labels(manifest["label"], "cifar10")


def sweep(model, tail, cache, labels, args, seed: int):
    """The stage's network work and tables (see the module docstring); returns the number of conditions run."""
    import numpy as np
    import torch

    from unitscope.interventions.conditions import ablation_fill
    from unitscope.studies.lesions import class_units as cu

    means = cache if cache.dim() == 2 else cache.mean(dim=(2, 3))
    fill = ablation_fill("zero", means)
    images = cu.LabelledImages(labels, cu.stratified_halves(labels, seed), int(labels.max()) + 1)
    effects = cu.unit_effects(tail, cache, fill, images)
    per_class = np.stack([means[torch.from_numpy(labels == c)].mean(0).numpy() for c in range(images.n_classes)], 1)
    shares = per_class.clip(min=0) / np.maximum(per_class.clip(min=0).sum(1, keepdims=True), 1e-12)
    sets = cu.labelled_sets(shares, effects, args.sizes)
    draws = cu.SetDraws(args.draws, args.draws, 10, seed)
    conditions = cu.build_set_conditions(sets, means.mean(0).numpy(), draws)
    held_out = images.held_out()
    evaluation = torch.from_numpy(~images.ranking)
    correct, _ = cu.evaluate(tail, cache[evaluation], conditions.ablate, fill, held_out.labels)
    scored = cu.score_conditions(conditions, correct, held_out)
    cu.compare_sets(scored, correct, held_out, n_bootstrap=2000, seed=seed)
    cu.pooled_comparison(scored, n_bootstrap=2000, seed=seed)
    return means.shape[1] + 1, len(conditions.table), int(evaluation.sum())


def main() -> None:
    args = arguments()
    import torch

    from unitscope.config import load_config
    from unitscope.data.manifest import ManifestDataset
    from unitscope.extract import extract_to_zarr, open_store
    from unitscope.interventions.tail import build_tail, layer_maps
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.registry import build_model
    from unitscope.runtime import make_loader, pick_device

    torch.set_num_threads(args.threads)
    config = load_config(REPO / "config" / "config.yaml")
    spec, device = config["models"][args.model], pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path, manifest, labels = labelled_images(config, args.n, Path(tmp))
        model = build_model(args.model, spec, data_dir=config["data_dir"], torch_home=REPO / "resources" / "torch")
        model = model.to(device).eval()
        dataset = ManifestDataset(manifest, build_transform(spec["preprocessing"]))
        loader = make_loader(dataset, batch_size=args.batch_size, num_workers=args.workers, device=device)
        with torch.inference_mode():  # warm-up
            model(torch.stack([dataset[i][0] for i in range(8)]).to(device))
        clock = Clock()
        store = extract_to_zarr(
            model, loader, list(manifest["image_id"]), args.layer, Path(tmp) / "s.zarr", device=device, progress=False
        )
        extract_wall, extract_cpu = clock.stop()
        tail = build_tail(model, args.layer, args.model)
        clock = Clock()
        if tail.pool_first:
            cache = torch.from_numpy(open_store(store)["means"][:])
        else:
            loading = {"batch_size": args.batch_size, "num_workers": args.workers, "device": device}
            cache, _ = layer_maps(model, args.layer, {"cifar10": path}, spec["preprocessing"], **loading)
        singles, conditions, held_out = sweep(model, tail, cache, labels, args, config["seed"])
        sweep_wall, sweep_cpu = clock.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.model} {args.layer}, {len(labels)} images ({held_out} held out), device {device}: {tail.path}")
    print(f"extract   wall {extract_wall:7.2f} s   cpu {extract_cpu:7.2f} s")
    counts = f"{singles} single-unit + {conditions} set conditions"
    print(f"sweep     wall {sweep_wall:7.2f} s   cpu {sweep_cpu:7.2f} s   ({counts})")
    print(f"ratio sweep / extract: wall {sweep_wall / extract_wall:.3f}, cpu {sweep_cpu / extract_cpu:.3f} (goal <= 2)")
    print(f"peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
