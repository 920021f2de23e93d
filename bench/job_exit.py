"""A torch job's fixed cost, start to exit: the interpreter, the imports, building a CIFAR ResNet-20 and its image
transform inside `log_to` (as every workflow script runs), and the interpreter's exit, in a fresh process, in this
tree and in an older revision, measured in one run (CPU seconds of the child, less sensitive to a busy machine than
wall seconds; both are printed).

    .venv/bin/python bench/job_exit.py [--before REV] [--repeat 5]

Since 2026-12-02 a job that builds no torchvision model does not import torchvision (whose import pulls in
torch._dynamo), and `log_to` freezes the garbage collector at exit. The old tree is a temporary git worktree.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = """
import sys, tempfile, os
sys.path.insert(0, {src!r})
from unitscope.logs import log_to
with log_to(os.path.join(tempfile.mkdtemp(), "job.log")):
    from unitscope.models.preprocessing import build_transform
    from unitscope.models.sources import build_architecture
    import unitscope.models.registry
    build_architecture("r", {{"arch": "cifar_resnet20"}})
    build_transform({{"resize": 32, "crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3}})
"""


def job_cost(tree: Path, repeat: int) -> tuple[float, float]:
    """Median (CPU s, wall s) of `repeat` fresh processes running JOB against `tree`'s package."""
    cpu, wall = [], []
    for _ in range(repeat):
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run([sys.executable, "-c", JOB.format(src=str(tree / "src"))], check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall.append(time.perf_counter() - start)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="4608cf6", help="the older revision to compare with")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.before], check=True,
                       capture_output=True)  # fmt: skip
        try:
            results = {}
            for _ in range(2):  # interleaved, so a change in the machine's load touches both alike
                for name, tree in (("before", old), ("now", ROOT)):
                    cpu, wall = job_cost(tree, args.repeat)
                    results.setdefault(name, []).append((cpu, wall))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    (cpu_b, wall_b), (cpu_n, wall_n) = (min(results[k]) for k in ("before", "now"))
    print(f"torch job, start to exit: before {cpu_b:.2f} CPU s ({wall_b:.2f} s wall), "
          f"now {cpu_n:.2f} CPU s ({wall_n:.2f} s wall), before/now {cpu_b / cpu_n:.2f} (CPU)")  # fmt: skip


if __name__ == "__main__":
    main()
