"""Activation maximisation batched over units versus one unit-run at a time, same code, same workload.

    .venv/bin/python bench/actmax.py [--steps 500] [--seeds 5] [--channels 5] [--neurons 3] [--threads 1]
                                     [--loop-sample 15] [--checkpoint results/actmax/model.pt] [--device cpu]

The workload is the study's default exploration: from each of conv1, conv2, conv3 of the Colored-MNIST CNN,
the `--channels` channels of highest variance (unbiased evaluation set), `--neurons` spatial neurons each and
`--seeds` seeds, objective B (single neuron), 28x28 pixels, Adam lr 0.05, `--steps` steps.

Each mode runs in its own process (its peak RSS is its own):
  batched  one `optimize_inputs` call per layer (all of that layer's unit-runs in one batch)
  looped   `optimize_inputs` called once per unit-run; with --loop-sample N only N unit-runs (spread over the
           layers) are run and the time is scaled to the whole workload (said so in the output)
  lucent   torch-lucent's `render_vis` on the same units, one at a time, if lucent is importable
Prints runs/s, seconds, peak memory and the ratio looped / batched (goal >= 20).
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
    settings = {"steps": args.steps, "lr": 0.05, "progress": False, "device": args.device, "snapshot_every": 50}
    start = time.perf_counter()
    done = 0
    final = []
    if args.mode == "batched":
        for layer in LAYERS:
            result = optimize_inputs(model, layer, UnitSpecs.from_rows(rows[layer]), **settings)
            final.extend(result.final_objective.tolist())
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
    }


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
    parser.add_argument("--mode", choices=["prepare", "batched", "looped", "lucent"], help=argparse.SUPPRESS)
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

        modes.append("lucent")
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
        print(f"  speed-up batched vs lucent render_vis: {lucent_ratio:.1f}x")


if __name__ == "__main__":
    main()
