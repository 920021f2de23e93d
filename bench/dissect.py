"""One layer's full dissection (thresholds + IoU tally) against the direct way, on CamVid frames.

    .venv/bin/python bench/dissect.py [--model mobilenet_v2_imagenet] [--layer features.18] [--n 233]
                                      [--direct-n 24] [--mask-size N] [--threads 2] [--batch-size 16]

Steps, each mode in its own process (so its peak RSS is its own):
  prepare  one forward pass over the N frames and the labels at mask resolution, to .npy caches
           (common to both ways, timed separately);
  fast     the stage's tally (`dissect_layer`: tiles that cannot fire are skipped) over all N frames;
  direct   upsample every channel of every image to mask resolution, threshold, intersect
           (`tally_direct`) over the first --direct-n frames (it is slow), and the fast way on the
           same frames, whose counts and IoUs must be identical.
Both ways use the same exact thresholds (over all N frames). Prints images/s, peak memory and the
ratio fast / direct. --mask-size: shorter side of the masks (default: the labels' 360 x 480).
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


def prepare(args, folder: Path) -> dict:
    import numpy as np
    import torch

    from unitscope.config import load_config
    from unitscope.data.concepts import mask_shape, open_concepts
    from unitscope.models.registry import build_model
    from unitscope.studies.dissection.caches import cache_activations, cache_labels, dissection_transform
    from unitscope.studies.dissection.dissect import unit_thresholds

    config = load_config(REPO / "config" / "config.yaml")
    torch.set_num_threads(args.threads)
    spec = config["models"][args.model]
    concepts = open_concepts(
        {"kind": "camvid", "root": "segmentation_camvid", "size": args.n},
        data_dir=config["data_dir"],
        resources_dir=folder,
        seed=config["seed"],
    )
    model = build_model(args.model, spec, data_dir=config["data_dir"], torch_home=REPO / "resources" / "torch")
    start = time.perf_counter()
    maps = cache_activations(
        model, concepts, [args.layer], dissection_transform(spec["preprocessing"]), folder, progress=False
    )[args.layer]
    forward = time.perf_counter() - start
    shape = mask_shape(concepts.label_size, args.mask_size)
    start = time.perf_counter()
    labels = cache_labels(concepts, shape, folder, progress=False)
    reading = time.perf_counter() - start
    np.save(folder / "thresholds.npy", unit_thresholds(maps, 0.005))
    np.save(folder / "scalars.npy", labels.scalars)
    np.save(folder / "annotated.npy", labels.annotated)
    if labels.combined is not None:
        np.save(folder / "combo_counts.npy", labels.combo_counts)
    return {
        "images": len(concepts),
        "units": int(maps.shape[1]),
        "map_shape": list(maps.shape[2:]),
        "mask_shape": list(shape),
        "forward_s": forward,
        "labels_s": reading,
        "n_codes": concepts.n_codes,
    }


def load(folder: Path, info: dict):
    import numpy as np

    from unitscope.studies.dissection.caches import LabelCache

    combined = folder / "combined.npy"
    labels = LabelCache(
        np.load(folder / "labels.npy", mmap_mode="r"),
        np.load(folder / "scalars.npy"),
        np.load(folder / "annotated.npy"),
        tuple(info["mask_shape"]),
        np.load(combined, mmap_mode="r") if combined.is_file() else None,
        np.load(folder / "combo_counts.npy") if combined.is_file() else None,
    )
    maps = np.load(folder / f"{info['layer']}.npy", mmap_mode="r")
    return maps, np.load(folder / "thresholds.npy"), labels


def run_mode(args, folder: Path, info: dict) -> dict:
    import numpy as np
    import torch

    from unitscope.studies.dissection.dissect import tally_direct
    from unitscope.studies.dissection.layer_dissection import dissect_layer

    torch.set_num_threads(args.threads)
    maps, thresholds, labels = load(folder, {**info, "layer": args.layer})
    n = info["images"] if args.mode == "fast" else min(args.direct_n, info["images"])
    start = time.perf_counter()
    if args.mode == "fast":
        tally = dissect_layer(maps, thresholds, labels, info["n_codes"], batch_size=args.batch_size)
    else:
        parts = []
        for i in range(n):
            batch = torch.from_numpy(np.array(maps[i : i + 1]))
            parts.append(tally_direct(batch, torch.from_numpy(thresholds), labels.batch(i, i + 1), info["n_codes"]))
        tally = parts[0]
        for part in parts[1:]:
            tally.add(part)
    seconds = time.perf_counter() - start
    np.savez(folder / f"{args.mode}.npz", intersection=tally.intersection, unit_area=tally.unit_area)
    return {
        "mode": args.mode,
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def same_subset(args, folder: Path, info: dict) -> bool:
    """The fast way on the direct way's frames: identical counts and IoUs."""
    import numpy as np

    from unitscope.data.concepts import CamVidConcepts
    from unitscope.studies.dissection.dissect import concept_lookup, iou_from_counts
    from unitscope.studies.dissection.layer_dissection import dissect_layer

    maps, thresholds, labels = load(folder, {**info, "layer": args.layer})
    n = min(args.direct_n, info["images"])
    subset = type(labels)(
        labels.pixels[:n],
        labels.scalars[:n],
        labels.annotated[:n],
        labels.shape,
        None if labels.combined is None else labels.combined[:n],
        labels.combo_counts,
    )
    fast = dissect_layer(maps[:n], thresholds, subset, info["n_codes"], batch_size=args.batch_size)
    direct = np.load(folder / "direct.npz")
    code_category, _ = concept_lookup(CamVidConcepts(REPO.parent / "shared" / "data" / "segmentation_camvid", size=1))
    iou_fast = iou_from_counts(fast.intersection, fast.unit_area, fast.label_area, code_category)
    label_area = fast.label_area  # the labels are shared; the direct run's unit counts must match
    iou_direct = iou_from_counts(direct["intersection"], direct["unit_area"], label_area, code_category)
    return bool(
        np.array_equal(fast.intersection, direct["intersection"])
        and np.array_equal(fast.unit_area, direct["unit_area"])
        and np.array_equal(iou_fast, iou_direct)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2_imagenet")
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--n", type=int, default=233)
    parser.add_argument("--direct-n", type=int, default=24)
    parser.add_argument("--mask-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mode", choices=["prepare", "fast", "direct", "check"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        folder = Path(args.folder)
        if args.mode == "prepare":
            info = prepare(args, folder)
            (folder / "info.json").write_text(json.dumps(info))
            print(json.dumps(info))
        else:
            info = json.loads((folder / "info.json").read_text())
            result = same_subset(args, folder, info) if args.mode == "check" else run_mode(args, folder, info)
            print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="dissect-bench-") as tmp:
        results = {}
        for mode in ("prepare", "fast", "direct", "check"):
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--folder", tmp],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"bench mode {mode} failed:\n{out.stderr[-3000:]}")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    info, fast, direct = results["prepare"], results["fast"], results["direct"]
    print(
        f"{args.model} {args.layer}: {info['units']} units, maps {info['map_shape'][0]}x{info['map_shape'][1]}, "
        f"masks {info['mask_shape'][0]}x{info['mask_shape'][1]}, {info['images']} CamVid frames, "
        f"{args.threads} threads, batch {args.batch_size}"
    )
    print(f"  common: forward pass {info['forward_s']:.1f} s, labels {info['labels_s']:.1f} s (not in the rates below)")
    for r in (fast, direct):
        print(
            f"  {r['mode']:6s} {r['images_per_s']:8.2f} images/s  ({r['seconds']:.1f} s for {r['images']} images, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB)"
        )
    print(f"  ratio fast / direct: {fast['images_per_s'] / direct['images_per_s']:.1f}x")
    print(
        f"  full dissection, fast: {fast['seconds']:.1f} s; direct (extrapolated): "
        f"{info['images'] / direct['images_per_s']:.0f} s"
    )
    print(f"  identical counts and IoUs on the direct way's {direct['images']} frames: {results['check']}")


if __name__ == "__main__":
    main()
