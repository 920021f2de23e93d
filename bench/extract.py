"""Extraction throughput versus a bare `model(x)` loop, on the same images and device.

    .venv/bin/python bench/extract.py [--model mobilenet_v2_imagenet] [--dataset faces] [--layer features.18]
                                      [--n 512] [--batch-size 64] [--workers 2] [--device auto] [--save-maps]

`--layer` may list several layers (comma-separated): the extraction stage runs one pass for all of them.
Each mode runs in its own process (so its peak RSS is its own) and after one warm-up batch:
  extract   the extraction stage (hooks, one Zarr store per layer written under a temporary name, renamed)
  bare      `model(x)` over the same DataLoader (same decoding and preprocessing)
  compute   `model(x)` over tensors already in memory (no data loading at all)
  separate  (several layers only) one single-layer extraction per layer, as before passes were shared
Prints images/s, peak memory, the ratio extract / bare (goal >= 0.9 on CPU) and, for several layers, how much
faster one shared pass is than separate passes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def run_mode(args) -> dict:
    import torch

    from unitscope.config import load_config
    from unitscope.data.manifest import ManifestDataset, build_manifest, source_layout
    from unitscope.extract import extract_layers, extract_to_zarr
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.registry import build_model
    from unitscope.runtime import make_loader, pick_device

    config = load_config(REPO / "config" / "config.yaml")
    torch.set_num_threads(args.threads)
    spec = config["models"][args.model]
    dataset_config = config["datasets"][args.dataset]
    with tempfile.TemporaryDirectory() as tmp:
        layout = source_layout(args.dataset, dataset_config["source"], data_dir=config["data_dir"], resources_dir=tmp)
        manifest = build_manifest(args.dataset, dataset_config["category"], layout, args.n, config["seed"])
        manifest = manifest[manifest["included"]].reset_index(drop=True)
        device = pick_device(args.device)
        model = build_model(args.model, spec, data_dir=config["data_dir"], torch_home=REPO / "resources" / "torch")
        model = model.to(device).eval()
        dataset = ManifestDataset(manifest, build_transform(spec["preprocessing"]))
        loader = make_loader(dataset, batch_size=args.batch_size, num_workers=args.workers, device=device)
        warm = torch.stack([dataset[i][0] for i in range(min(args.batch_size, len(dataset)))]).to(device)
        with torch.inference_mode():
            model(warm)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        start = time.perf_counter()
        layers = args.layer.split(",")
        ids = list(manifest["image_id"])
        if args.mode == "extract":
            wanted = dict.fromkeys(layers, args.save_maps)
            extract_layers(model, loader, ids, wanted, Path(tmp) / "bench.pass", device=device, progress=False)
        elif args.mode == "separate":
            for layer in layers:
                out = Path(tmp) / f"{layer}.zarr"
                extract_to_zarr(model, loader, ids, layer, out, save_maps=args.save_maps, device=device, progress=False)
        elif args.mode == "bare":
            with torch.inference_mode():
                for batch, _ in loader:
                    model(batch.to(device, non_blocking=True))
        else:
            batches = [
                torch.stack([dataset[i][0] for i in range(s, min(s + args.batch_size, len(dataset)))])
                for s in range(0, len(dataset), args.batch_size)
            ]
            sync()
            start = time.perf_counter()
            with torch.inference_mode():
                for batch in batches:
                    model(batch.to(device, non_blocking=True))
        sync()
        seconds = time.perf_counter() - start
    return {
        "mode": args.mode,
        "images": len(manifest),
        "seconds": seconds,
        "images_per_s": len(manifest) / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
        "device": str(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2_imagenet")
    parser.add_argument("--dataset", default="faces")
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save-maps", action="store_true")
    parser.add_argument("--mode", choices=["extract", "bare", "compute", "separate"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("bare", "extract", "compute", *(["separate"] if "," in args.layer else [])):
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode], capture_output=True, text=True, check=True
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{args.model} {args.layer} on {results['extract']['images']} {args.dataset} images, "
        f"batch {args.batch_size}, {args.workers} workers, {args.threads} threads, {results['extract']['device']}"
        f"{', with full maps' if args.save_maps else ''}"
    )
    for mode, r in results.items():
        cuda = f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if r["peak_cuda_mb"] is not None else ""
        print(
            f"  {mode:8s} {r['images_per_s']:8.1f} images/s  ({r['seconds']:.2f} s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB{cuda})"
        )
    print(f"  ratio extract / bare loop: {results['extract']['images_per_s'] / results['bare']['images_per_s']:.2f}")
    if "separate" in results:
        speedup = results["separate"]["seconds"] / results["extract"]["seconds"]
        print(f"  one shared pass vs a pass per layer: {speedup:.2f}x faster")
    print(
        f"  ratio extract / compute only: {results['extract']['images_per_s'] / results['compute']['images_per_s']:.2f}"
    )


if __name__ == "__main__":
    main()
