"""The actmax study's registry target in the default config (MobileNetV2 `features.18.1`, 3 channels x 2 seeds,
256 steps at 224 px, FFT parameterisation with transforms) before and after folding each BatchNorm into the
convolution before it (`runtime.inference_copy`, issue 15 item 4), in one process, alternating.

    .venv/bin/python bench/actmax_registry.py [--threads 2] [--repeat 2] [--steps 256] [--channels 925 100 200]

The channels default to three fixed ones (the default run takes the faces study's first three; the time does not
depend on which). Prints wall and CPU seconds per mode, seconds per step, the ratio, and how far the two ways'
results are apart: the largest difference of the layer's outputs between the folded and the original model on the
same images, and each run's final activation (the unit on its final image, the original model, one plain pass).
Folding changes the arithmetic's rounding, and Adam's normalised steps carry such differences into the images, so the
images are compared by their final activations, beside the same spread from changing the thread count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

LAYER = "features.18.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--channels", type=int, nargs="+", default=[925, 100, 200])
    args = parser.parse_args()

    import torch
    import yaml
    from benchutil import Clock

    from unitscope.models.registry import build_model
    from unitscope.runtime import inference_copy
    from unitscope.studies.actmax.registry import channel_rows, optimize_channels

    torch.set_num_threads(args.threads)
    spec = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]["mobilenet_v2_imagenet"]
    model = build_model("mobilenet_v2_imagenet", spec, data_dir=REPO.parent / "shared" / "data", torch_home=None)
    rows = channel_rows(args.channels, ["channel"], 2, l2=0.0, tv=0.0)
    print(f"{len(rows)} runs x {args.steps} steps on {LAYER}, {args.threads} threads")
    times, finals = {False: [], True: []}, {}
    for _ in range(args.repeat):
        for fold in (False, True):
            clock = Clock()
            result, _ = optimize_channels(
                model, LAYER, spec["preprocessing"], rows, steps=args.steps, lr=0.05,
                parameterization="auto", progress=False, fold_batchnorm=fold,
            )  # fmt: skip
            times[fold].append(clock.stop())
            finals[fold] = result.final_unit
    for fold, runs in times.items():
        name = "folded BatchNorm (now)" if fold else "as built (before)"
        shown = ", ".join(f"{wall:.1f} s wall / {cpu:.1f} s CPU" for wall, cpu in runs)
        print(f"  {name}: {shown}; {min(runs)[0] / args.steps:.3f} s per step")
        shown = ", ".join(f"{v:.2f}" for v in finals[fold])
        print(f"    final activations: {shown} (median {np.median(finals[fold]):.2f})")
    torch.set_num_threads(1)  # the spread that rounding alone gives: the same code on another thread count
    result, _ = optimize_channels(
        model, LAYER, spec["preprocessing"], rows, steps=args.steps, lr=0.05, parameterization="auto", progress=False,
        fold_batchnorm=False,
    )  # fmt: skip
    shown = ", ".join(f"{v:.2f}" for v in result.final_unit)
    print(f"  as built, 1 thread: final activations {shown} (median {np.median(result.final_unit):.2f})")
    best = {fold: min(runs) for fold, runs in times.items()}
    print(f"  ratio: {best[False][0] / best[True][0]:.2f}x faster wall, {best[False][1] / best[True][1]:.2f}x less CPU")
    print(f"  largest output difference, folded vs original: {output_difference(model, inference_copy):.2e}")


def output_difference(model, fold) -> float:
    """max |folded - original| of the layer's output on 8 random images (the layer's values reach about 10)."""
    import torch

    from unitscope.hooks import ActivationRecorder

    images = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    outputs = []
    for network in (model, fold(model, keep={LAYER})):
        recorder = ActivationRecorder(network, [LAYER], keep_maps=True, maps_dtype=torch.float32, stop_early=True)
        with recorder, torch.no_grad():
            recorder(images)
        outputs.append(recorder.maps[LAYER])
    return float((outputs[0] - outputs[1]).abs().max())


if __name__ == "__main__":
    main()
