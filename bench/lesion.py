"""The faces study's intervention stage versus one plain extraction pass and versus the naive way.

    .venv/bin/python bench/lesion.py [--model mobilenet_v2_imagenet] [--layer features.18] [--n 512]
                                     [--draws 200] [--threads 2] [--device auto] [--naive-sample 3]

On `--n` real images (half faces, a quarter scenes, a quarter objects; seeded draw):
  extract     one plain extraction pass: `extract_to_zarr` over a DataLoader (decoding included)
  stage       the intervention stage for intact + lesion + keep-only + `--draws` random lesions:
              the layer's cache (the stored means when the layer feeds the global pool, else one pass
              computing the maps), every condition's pooled features and logits, and the KL readout;
              reported with and without the probe / PCA readouts
  naive       one full forward pass per condition with a hook (images decoded once, kept in memory,
              which favours the naive way); `--naive-sample` conditions are timed and extrapolated
Prints wall and CPU seconds (CPU time is the steadier figure on a shared machine), the ratios
stage / extract (goal <= 2), (extract + stage) / extract (everything, the one pass included),
naive / stage, and peak RSS.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2_imagenet")
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--naive-sample", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    from unitscope.config import load_config
    from unitscope.data.manifest import ManifestDataset, build_manifest, folder_layout
    from unitscope.extract import extract_to_zarr, open_store
    from unitscope.interventions.conditions import ablation_fill, build_conditions
    from unitscope.interventions.controls import random_sets
    from unitscope.interventions.tail import build_tail, condition_outputs, hooked_condition, layer_maps
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.registry import build_model
    from unitscope.runtime import make_loader, pick_device
    from unitscope.stats import derived_rng
    from unitscope.studies.faces.readouts import Readout, kl_readouts, layer_readouts
    from unitscope.studies.faces.selection import top_percentile

    torch.set_num_threads(args.threads)
    config = load_config(REPO / "config" / "config.yaml")
    spec = config["models"][args.model]
    device = pick_device(args.device)
    sizes = {"faces": args.n // 2, "scenes": args.n // 4, "objects": args.n - args.n // 2 - args.n // 4}
    with tempfile.TemporaryDirectory() as tmp:
        manifests, paths = {}, {}
        for name, size in sizes.items():
            dataset_config = config["datasets"][name]
            layout = folder_layout(name, dataset_config["source"], config["data_dir"])
            manifest = build_manifest(name, dataset_config["category"], layout, size, config["seed"])
            manifests[name] = manifest[manifest["included"]].reset_index(drop=True)
            paths[name] = str(Path(tmp) / f"{name}.parquet")
            manifests[name].to_parquet(paths[name])
        import pandas as pd

        everything = pd.concat(list(manifests.values()), ignore_index=True)
        is_face = np.array(everything["category"] == config["datasets"]["faces"]["category"], dtype=bool)
        model = build_model(args.model, spec, data_dir=config["data_dir"], torch_home=REPO / "resources" / "torch")
        model = model.to(device).eval()
        dataset = ManifestDataset(everything, build_transform(spec["preprocessing"]))
        loader = make_loader(dataset, batch_size=args.batch_size, num_workers=args.workers, device=device)
        with torch.inference_mode():  # warm-up
            model(torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))]).to(device))

        clock = Clock()
        store = extract_to_zarr(
            model, loader, list(everything["image_id"]), args.layer, Path(tmp) / "s.zarr", device=device, progress=False
        )
        extract_wall, extract_cpu = clock.stop()

        tail = build_tail(model, args.layer, args.model)
        clock = Clock()
        if tail.pool_first:
            cache = torch.from_numpy(np.array(open_store(store)["means"][:]))
            means = cache
        else:
            cache, _ = layer_maps(
                model,
                args.layer,
                paths,
                spec["preprocessing"],
                batch_size=args.batch_size,
                num_workers=args.workers,
                device=device,
            )
            means = cache.mean(dim=(2, 3))
        cache_wall, cache_cpu = clock.stop()
        n_channels = means.shape[1]
        selected = top_percentile(means[torch.as_tensor(is_face)].numpy(), 5)
        draws = random_sets(n_channels, len(selected), args.draws, derived_rng(config["seed"], "bench/random"))
        conditions = build_conditions(n_channels, selected, draws, np.zeros((0, len(selected)), dtype=np.int64))
        keep = (conditions.table["mode"] != "keep_only") | (conditions.table["family"] == "selected")
        ablate = conditions.ablate[torch.as_tensor(np.array(keep, dtype=bool))]  # intact, lesion, keep-only, randoms
        fill = ablation_fill("zero", means)

        clock = Clock()
        outputs = condition_outputs(tail, cache, ablate, fill, device=device, with_pooled=not tail.pool_first)
        _, _, intact_logits = next(condition_outputs(tail, cache, ablate[:1], fill, device=device))
        intact_log_probs = torch.log_softmax(intact_logits[0].float(), dim=-1)
        for _, _pooled, logits in outputs:
            kl_readouts(logits, intact_log_probs, is_face)
        conditions_wall, conditions_cpu = clock.stop()

        clock = Clock()
        readout = Readout.make(is_face, n_folds=5, train_fraction=0.5, C=1.0, seed=config["seed"])
        layer_readouts(means, ablate.cpu(), fill, readout)
        readouts_wall, readouts_cpu = clock.stop()

        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        # compute an exact stage cannot avoid: every condition re-runs the layers after the intervention point
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as full_flops, torch.inference_mode():
            model(images[:1].to(device))
        with FlopCounterMode(display=False) as tail_flops, torch.inference_mode():
            tail(cache[:1].to(device))  # one image, one condition
        tail_share = tail_flops.get_total_flops() / max(full_flops.get_total_flops(), 1)
        clock = Clock()
        for k in range(min(args.naive_sample, len(ablate))):
            for first in range(0, len(images), args.batch_size):
                hooked_condition(model, tail, images[first : first + args.batch_size].to(device), ablate[k], fill)
        sample_wall, sample_cpu = clock.stop()
        timed = min(args.naive_sample, len(ablate))
        per_condition, per_condition_cpu = sample_wall / timed, sample_cpu / timed
        naive_wall, naive_cpu = per_condition * len(ablate), per_condition_cpu * len(ablate)

    stage_wall, stage_cpu = cache_wall + conditions_wall, cache_cpu + conditions_cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"workload: {args.model} {args.layer}, {len(everything)} images ({sizes}), {len(ablate)} conditions "
        f"(intact, lesion, keep-only, {args.draws} random lesions of {len(selected)} channels), "
        f"{args.threads} threads, device {device}, tail {'on channel means' if tail.pool_first else 'on maps'}"
    )
    rate = len(everything) / extract_wall
    print(f"extract pass         {extract_wall:7.2f} s wall  {extract_cpu:7.2f} s cpu  ({rate:.1f} img/s)")
    print(f"stage: layer cache   {cache_wall:7.2f} s wall  {cache_cpu:7.2f} s cpu")
    print(f"stage: conditions+KL {conditions_wall:7.2f} s wall  {conditions_cpu:7.2f} s cpu")
    print(f"stage: probes+PCA    {readouts_wall:7.2f} s wall  {readouts_cpu:7.2f} s cpu")
    print(
        f"naive (extrapolated) {naive_wall:7.2f} s wall  {naive_cpu:7.2f} s cpu  ({per_condition:.2f} s wall per "
        f"condition, {timed} timed)"
    )
    for label, stage, extract, readouts, naive in (
        ("wall", stage_wall, extract_wall, readouts_wall, naive_wall),
        ("cpu ", stage_cpu, extract_cpu, readouts_cpu, naive_cpu),
    ):
        print(
            f"[{label}] stage (network) / extract = {stage / extract:.3f} (goal <= 2); "
            f"(extract + stage) / extract = {(extract + stage) / extract:.3f}; "
            f"stage with probes+PCA / extract = {(stage + readouts) / extract:.3f}; "
            f"naive / stage (network) = {naive / stage:.0f}x"
        )
    needed = len(ablate) * tail_share
    print(
        f"FLOPs: the layers after {args.layer} are {tail_share:.2%} of a forward pass, so {len(ablate)} conditions "
        f"computed exactly need {needed:.2f} forward passes' worth of FLOPs; the stage ran them "
        f"{needed / (conditions_wall / extract_wall):.1f}x faster per FLOP than the extraction pass (the goal <= 2 "
        f"needs {needed / 2:.1f}x)"
    )
    print(f"peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
