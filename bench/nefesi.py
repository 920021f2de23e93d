"""nefesi index throughput: the batched probes versus the per-channel loop over the same work.

    .venv/bin/python bench/nefesi.py [--model resnet56_cifar] [--dataset objects] [--layer layer3]
                                     [--images 500] [--top-n 100] [--baseline-channels 2] [--threads 2] [--repeats 3]
                                     [--device auto]

Both compute, for every exemplar crop of a channel, its response under all 29 transforms (identity, gray, 23
rotations, 4 mirrors) and the index table needs nothing else:
  batched   `probe_layer` + `selectivity_table`: distinct crops of all channels probed once on stride-aligned
            windows around their fields, in large batches, every forward answering all channels;
  loop      `per_channel_responses`: nefesi's own algorithm, for each channel and transform its N exemplar
            images, whole, with the crop transformed, through the model (timed on --baseline-channels channels
            and extrapolated per channel).
Prints channels per second for both, the ratio (goal >= 10), the largest difference between the two on the
looped channels, and peak memory. Images are decoded once, before timing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet56_cifar")
    parser.add_argument("--dataset", default="objects")
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--baseline-channels", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each mode; medians reported")
    args = parser.parse_args()

    import numpy as np
    import torch

    from unitscope.config import load_config
    from unitscope.data.manifest import ManifestDataset, build_manifest, source_layout
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.registry import build_model
    from unitscope.runtime import inference_copy, pick_device
    from unitscope.studies.nefesi.indexes import selectivity_table
    from unitscope.studies.nefesi.probes import per_channel_responses, probe_layer, tensor_batches
    from unitscope.studies.nefesi.topn import collect_top_n

    torch.set_num_threads(args.threads)
    config = load_config(REPO / "config" / "config.yaml")
    spec = config["models"][args.model]
    preprocessing = spec["preprocessing"]
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        source = config["datasets"][args.dataset]
        layout = source_layout(args.dataset, source["source"], data_dir=config["data_dir"], resources_dir=tmp)
        manifest = build_manifest(args.dataset, source["category"], layout, args.images, config["seed"])
    manifest = manifest[manifest["included"]].reset_index(drop=True)
    dataset = ManifestDataset(manifest, build_transform(preprocessing))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    model = build_model(args.model, spec, data_dir=config["data_dir"], torch_home=REPO / "resources" / "torch")
    model = inference_copy(model).to(device)  # what the pipeline runs (BatchNorm folded, channels-last)
    crop = int(preprocessing["crop"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    batches = [
        (images[i : i + 64].to(device), torch.arange(i, min(i + 64, len(images)))) for i in range(0, len(images), 64)
    ]
    top = collect_top_n(model, batches, [args.layer], args.top_n, device=device, progress=False)[args.layer]
    sync()
    top_seconds = time.perf_counter() - start

    channels = list(range(min(args.baseline_channels, top.channels)))
    batched_times, loop_times = [], []
    for _ in range(args.repeats):  # alternate the two so that a busy moment of a shared machine hits both
        start = time.perf_counter()
        probes = probe_layer(
            model,
            args.layer,
            top,
            tensor_batches(images),
            image_size=(crop, crop),
            mean=preprocessing["mean"],
            std=preprocessing["std"],
            batch_size=args.batch_size,
            device=device,
            progress=False,
        )
        selectivity_table(
            top,
            probes,
            np.zeros(len(images), dtype=np.int64),
            ["all"],
            mean=preprocessing["mean"],
            std=preprocessing["std"],
        )
        sync()
        batched_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = per_channel_responses(
            model,
            args.layer,
            top,
            images.to(device),
            mean=preprocessing["mean"],
            std=preprocessing["std"],
            channels=channels,
        )
        sync()
        loop_times.append(time.perf_counter() - start)
    difference = float((probes.responses[channels] - reference.cpu()).abs().nan_to_num(0).max())
    batched_seconds, loop_seconds = float(np.median(batched_times)), float(np.median(loop_times))

    batched_rate = top.channels / batched_seconds
    loop_rate = len(channels) / loop_seconds
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.model} {args.layer} on {device}, {args.threads} threads: {len(images)} {args.dataset} images, "
        f"{top.channels} channels, top-{top.n}, {len(probes.transforms)} transforms"
    )
    print(f"  top-N pass      {top_seconds:8.1f} s")
    print(
        f"  medians of {args.repeats} alternating runs (batched {', '.join(f'{t:.1f}' for t in batched_times)} s; "
        f"loop {', '.join(f'{t:.1f}' for t in loop_times)} s)"
    )
    print(
        f"  batched probes  {batched_seconds:8.1f} s  {probes.probes} distinct crops, {probes.forwards} windows "
        f"-> {batched_rate:.2f} channels/s"
    )
    print(
        f"  per-channel loop {loop_seconds:7.1f} s  for {len(channels)} channels "
        f"({len(channels) * top.n * len(probes.transforms)} whole images) -> {loop_rate:.3f} channels/s"
    )
    print(
        f"  ratio batched / loop: {batched_rate / loop_rate:.1f}x   max |difference| {difference:.2g}   "
        f"peak RSS {peak_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
