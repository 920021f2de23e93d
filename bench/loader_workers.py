"""Torch threads against image-loading workers for one extraction loop: the A/B behind `runtime.loader_workers`.

    .venv/bin/python bench/loader_workers.py [--n 384]

MobileNetV2 over the first N faces of the default config, batch 64, after one warm-up batch; prints images/s for
(2 torch threads, 0 workers), (1 thread, 1 worker) and (2 threads, 1 worker).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SETTINGS = ((2, 0), (1, 1), (2, 1))


def main() -> None:
    import torch
    from torch.utils.data import DataLoader

    from unitscope.config import load_config
    from unitscope.data.manifest import ManifestDataset, build_manifest, source_layout
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.registry import build_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=384)
    args = parser.parse_args()
    config = load_config(REPO / "config" / "config.yaml")
    spec, faces = config["models"]["mobilenet_v2_imagenet"], config["datasets"]["faces"]
    with tempfile.TemporaryDirectory() as tmp:
        layout = source_layout("faces", faces["source"], data_dir=config["data_dir"], resources_dir=tmp)
        manifest = build_manifest("faces", "face", layout, args.n, config["seed"])
    manifest = manifest[manifest["included"]].reset_index(drop=True)
    model = build_model("mobilenet_v2_imagenet", spec, data_dir=config["data_dir"], torch_home=REPO / "resources/torch")
    images = ManifestDataset(manifest, build_transform(spec["preprocessing"]))
    for threads, workers in SETTINGS:
        torch.set_num_threads(threads)
        loader = DataLoader(images, batch_size=64, num_workers=workers, prefetch_factor=4 if workers else None)
        with torch.inference_mode():
            model(torch.stack([images[i][0] for i in range(8)]))
            start = time.perf_counter()
            for batch, _ in loader:
                model(batch)
        rate = len(manifest) / (time.perf_counter() - start)
        print(f"torch threads {threads}, loader workers {workers}: {rate:.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
