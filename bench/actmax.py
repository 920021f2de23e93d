"""Activation maximisation batched over units versus one unit-run at a time, same code, same workload.

    .venv/bin/python bench/actmax.py [--steps 500] [--seeds 5] [--channels 5] [--neurons 3] [--threads 1]
                                     [--loop-sample 15] [--checkpoint results/actmax/model.pt] [--device cpu]

The workload is the study's default exploration: from each of conv1, conv2, conv3 of the Colored-MNIST CNN,
the `--channels` channels of highest variance (unbiased evaluation set), `--neurons` spatial neurons each and
`--seeds` seeds, objective B (single neuron), 28x28 pixels, Adam lr 0.05, `--steps` steps.

Each mode runs in its own process (its peak RSS is its own):
  batched  one `optimize_inputs` call per layer (all of that layer's unit-runs in one batch)
  batched_fft
           the same with lucent's arithmetic (`parameterization="fft"`, random transforms), if lucent is importable
  looped   `optimize_inputs` called once per unit-run; with --loop-sample N only N unit-runs (spread over the
           layers) are run and the time is scaled to the whole workload (said so in the output)
  lucent   torch-lucent's `render_vis` on the same units, one at a time, if lucent is importable
  lucent_batched
           torch-lucent's batched mode, if importable: one `render_vis` per layer, the sum of every unit-run's
           neuron objective over a batch of images (its FFT parameterisation and standard transforms)
Prints runs/s, seconds, peak memory and the ratio looped / batched (goal >= 20); against lucent's batched mode, the
ratio at equal steps and at equal final activation: per layer, the first of this code's snapshots (every 10 steps)
whose median activation reaches lucent's final median, its time scaled from the layer's time (every activation the
unit alone on the image, one plain forward pass, no penalty).
lucent is optional, not installed by `make`: put it beside the venv with
  pip install --target /tmp/lucent_site --no-deps torch-lucent kornia==0.4.1 decorator ipython
and run with PYTHONPATH=/tmp/lucent_site.
The model is the pipeline's checkpoint when --checkpoint exists, otherwise one trained here for one epoch; it and
the chosen units are prepared in a separate process first.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
LAYERS = ("conv1", "conv2", "conv3")


def prepare(args) -> None:
    """Model and unit rows for the workload, saved to --work (so each timed mode's memory is its own)."""
    import torch

    from unitscope.studies.actmax.colored_mnist import (
        build_colored_mnist,
        load_mnist_sources,
        load_trained_model,
        train_model,
    )
    from unitscope.studies.actmax.units import select_units

    torch.set_num_threads(args.threads)
    data = build_colored_mnist(load_mnist_sources(REPO.parent / "shared" / "data" / "mnist"), rho=0.99, seed=0)
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_file() and checkpoint.with_suffix(".json").is_file():
        model = load_trained_model(checkpoint, checkpoint.with_suffix(".json"))
        source = str(checkpoint)
    else:
        model, _ = train_model(data, epochs=1, seed=0, progress=False)
        source = "trained here (1 epoch, seed 0)"
    images, _, _ = data.tensors("unbiased")
    selection = select_units(
        model, images[:2000], LAYERS, channels_per_layer=args.channels, neurons_per_channel=args.neurons
    )
    rows = {
        layer: [
            {"channel": u["channel"], "objective": "neuron", "y": y, "x": x, "seed": s, "l2": 0.01, "tv": 0.05}
            for u in selection[layer]["units"]
            for y, x in u["neurons"]
            for s in range(args.seeds)
        ]
        for layer in LAYERS
    }
    work = Path(args.work)
    torch.save(model.state_dict(), work / "model.pt")
    (work / "workload.json").write_text(json.dumps({"rows": rows, "widths": list(model.widths), "model": source}))


def workload(args):
    import torch

    from unitscope.studies.actmax.colored_mnist import ColoredMnistCNN

    spec = json.loads((Path(args.work) / "workload.json").read_text())
    model = ColoredMnistCNN(tuple(spec["widths"]))
    model.load_state_dict(torch.load(Path(args.work) / "model.pt", weights_only=True))
    return model.eval().requires_grad_(False), spec["rows"]


def run_mode(args) -> dict:
    import torch

    from unitscope.studies.actmax.render import optimize_inputs
    from unitscope.studies.actmax.specs import UnitSpecs

    torch.set_num_threads(args.threads)
    model, rows = workload(args)
    model = model.to(args.device)
    total = sum(len(r) for r in rows.values())
    settings = {"steps": args.steps, "lr": 0.05, "progress": False, "device": args.device, "snapshot_every": 10}
    start = time.perf_counter()
    done = 0
    final = []
    layer_seconds, activations, trajectories = {}, {}, {}
    if args.mode in ("batched", "batched_fft"):
        if args.mode == "batched_fft":  # lucent's arithmetic: FFT / decorrelated colour, random transforms
            settings = {**settings, "parameterization": "fft", "transforms": True}
        for layer in LAYERS:
            layer_start = time.perf_counter()
            result = optimize_inputs(model, layer, UnitSpecs.from_rows(rows[layer]), **settings)
            layer_seconds[layer] = time.perf_counter() - layer_start
            final.extend(result.final_objective.tolist())
            activations[layer] = _plain_activation(model, layer, rows[layer], result.images)
            trajectories[layer] = {
                step: float(np.median(_plain_activation(model, layer, rows[layer], torch.from_numpy(shot) / 255.0)))
                for step, shot in zip(result.snapshot_steps, result.snapshots, strict=True)
            }
            done += len(rows[layer])
    elif args.mode == "looped":
        sample = [(layer, row) for layer in LAYERS for row in rows[layer]]
        if args.loop_sample:
            step = max(1, len(sample) // args.loop_sample)
            sample = sample[::step][: args.loop_sample]
        for layer, row in sample:
            result = optimize_inputs(model, layer, UnitSpecs.from_rows([row]), **settings)
            final.extend(result.final_objective.tolist())
            done += 1
    elif args.mode == "lucent_batched":
        for layer in LAYERS:
            layer_start = time.perf_counter()
            images = _lucent_batched(model, layer, rows[layer], args.steps)
            layer_seconds[layer] = time.perf_counter() - layer_start
            activations[layer] = _plain_activation(model, layer, rows[layer], images)
            done += len(rows[layer])
    else:
        from lucent.optvis import objectives, param, render

        for layer in LAYERS:
            for row in rows[layer][: args.loop_sample or None]:
                objective = objectives.neuron(layer, row["channel"], x=row["x"], y=row["y"])
                render.render_vis(
                    model,
                    objective,
                    lambda: param.image(28),
                    thresholds=(args.steps,),
                    show_image=False,
                    progress=False,
                    preprocess=False,
                    fixed_image_size=28,
                )
                done += 1
    seconds = time.perf_counter() - start
    return {
        "mode": args.mode,
        "runs": done,
        "workload_runs": total,
        "seconds": seconds,
        "runs_per_s": done / seconds,
        "workload_seconds": seconds * total / done,
        "median_final_objective": sorted(final)[len(final) // 2] if final else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if str(args.device).startswith("cuda") else None,
        "layer_seconds": layer_seconds,
        "median_activation": {layer: float(np.median(values)) for layer, values in activations.items()},
        "trajectory": trajectories,
    }


def _plain_activation(model, layer: str, rows: list[dict], images) -> np.ndarray:
    """Each run's unit (objective B, no penalty) on its image [B, C, H, W] in [0, 1]: one plain forward pass."""
    from unitscope.studies.actmax.render import unit_activation
    from unitscope.studies.actmax.specs import UnitSpecs

    return unit_activation(model, layer, UnitSpecs.from_rows(rows), images.float())


def _lucent_batched(model, layer: str, rows: list[dict], steps: int):
    """torch-lucent's batched mode: one `render_vis` call for all of a layer's unit-runs, objective the sum of each
    batch element's neuron, its default parameterisation (FFT, decorrelated colour) and transforms, 28 px, no
    preprocessing (the CNN takes [0, 1] images). Returns the final images [B, 3, 28, 28] in [0, 1]."""
    import torch
    from lucent.optvis import objectives, param, render

    objective = objectives.neuron(layer, rows[0]["channel"], x=rows[0]["x"], y=rows[0]["y"], batch=0)
    for index, row in enumerate(rows[1:], start=1):
        objective = objective + objectives.neuron(layer, row["channel"], x=row["x"], y=row["y"], batch=index)
    images = render.render_vis(
        model,
        objective,
        lambda: param.image(28, batch=len(rows)),
        thresholds=(steps,),
        show_image=False,
        progress=False,
        preprocess=False,
        fixed_image_size=28,
    )[-1]
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--neurons", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loop-sample", type=int, default=15, help="unit-runs timed in looped mode (0: all)")
    parser.add_argument("--checkpoint", default=str(REPO / "results" / "actmax" / "model.pt"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--mode",
        choices=["prepare", "batched", "batched_fft", "looped", "lucent", "lucent_batched"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "prepare":
        prepare(args)
        return
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    modes = ["batched", "looped"]
    try:
        import lucent  # noqa: F401

        modes += ["lucent", "lucent_batched", "batched_fft"]
    except ImportError:
        print("torch-lucent is not importable: its render_vis is not compared (optional dependency)")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in ["prepare", *modes]:
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--work", work],
                capture_output=True,
                text=True,
                check=True,
            )
            if mode != "prepare":
                results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        source = json.loads((Path(work) / "workload.json").read_text())["model"]
    total = results["batched"]["workload_runs"]
    print(
        f"workload: {total} unit-runs ({args.channels} channels x {len(LAYERS)} layers x {args.neurons} neurons x "
        f"{args.seeds} seeds), objective B, {args.steps} Adam steps, 28x28, {args.threads} thread(s), {args.device}"
    )
    print(f"model: {source}; peak RSS is each timed process's own (torch, model, workload; no dataset)")
    for mode, r in results.items():
        scaled = "" if r["runs"] == total else f"; {r['runs']} of {total} runs timed, whole workload scaled"
        cuda = f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if r["peak_cuda_mb"] is not None else ""
        print(
            f"  {mode:8s} {r['runs_per_s']:8.2f} runs/s  workload {r['workload_seconds']:8.1f} s "
            f"(peak RSS {r['peak_rss_mb']:.0f} MB{cuda}{scaled})"
        )
    ratio = results["looped"]["workload_seconds"] / results["batched"]["workload_seconds"]
    print(f"  speed-up batched vs one unit-run at a time: {ratio:.1f}x (goal >= 20x)")
    if "lucent" in results:
        lucent_ratio = results["lucent"]["workload_seconds"] / results["batched"]["workload_seconds"]
        print(f"  speed-up batched vs lucent render_vis one unit-run per call: {lucent_ratio:.1f}x")
    if "lucent_batched" in results:
        print("  against lucent's batched mode, this code's default (pixels, L2/TV, no transforms):")
        print_equal_activation(results["batched"], results["lucent_batched"], args.steps)
        print("  against lucent's batched mode, this code with its arithmetic (FFT, decorrelated colour, transforms):")
        print_equal_activation(results["batched_fft"], results["lucent_batched"], args.steps)


def print_equal_activation(ours: dict, lucent: dict, steps: int) -> None:
    """Batched unitscope against lucent's batched mode: time at equal steps, and time to reach lucent's final median
    activation (per layer, from this code's snapshots; each activation from a plain forward pass, no penalty)."""
    ratio = lucent["workload_seconds"] / ours["workload_seconds"]
    print(f"  speed-up batched vs lucent batched, both {steps} steps: {ratio:.1f}x")
    to_equal = 0.0
    for layer, seconds in ours["layer_seconds"].items():
        target = lucent["median_activation"][layer]
        reached = [int(step) for step, value in ours["trajectory"][layer].items() if value >= target]
        first = min(reached) if reached else None
        print(
            f"    {layer}: median final activation {ours['median_activation'][layer]:.3g} here, {target:.3g} lucent "
            f"batched ({lucent['layer_seconds'][layer]:.1f} s); lucent's reached here at step "
            f"{first if first is not None else 'never'} ({seconds:.1f} s for {steps} steps)"
        )
        to_equal = float("nan") if first is None else to_equal + seconds * first / steps
    equal = lucent["workload_seconds"] / to_equal if to_equal == to_equal and to_equal > 0 else float("nan")
    print(f"  speed-up batched vs lucent batched at equal final activation: {equal:.1f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
