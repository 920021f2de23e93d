"""Job start-up: seconds to import what each workflow script imports, in a fresh interpreter, in this tree and in
an older revision (default: before the table-only jobs stopped importing torch), measured in one run.

    .venv/bin/python bench/job_startup.py [--before REV] [--repeat 3]

Prints one row per script (median of --repeat fresh processes each), the ratio before / now, and the sum over
the scripts a default run executes once each. Run it on an idle machine; the old tree is a temporary git worktree.
"""

from __future__ import annotations

import argparse
import ast
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script_modules(tree: Path, script: str) -> list[str]:
    source = ast.parse((tree / "workflow" / "scripts" / f"{script}.py").read_text())
    return [
        node.module
        for node in ast.walk(source)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "unitscope"
    ]


def import_seconds(tree: Path, modules: list[str], repeat: int) -> float:
    code = f"import sys; sys.path.insert(0, {str(tree / 'src')!r}); " + "; ".join(f"import {m}" for m in modules)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="03e66d4^", help="the older revision to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    scripts = sorted(path.stem for path in (ROOT / "workflow" / "scripts").glob("*.py"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `timeout` stops it: still remove the worktree
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.before], check=True,
                       capture_output=True)  # fmt: skip
        try:
            rows = []
            for script in scripts:
                if not (old / "workflow" / "scripts" / f"{script}.py").is_file():
                    continue
                before = import_seconds(old, script_modules(old, script), args.repeat)
                now = import_seconds(ROOT, script_modules(ROOT, script), args.repeat)
                rows.append((script, before, now))
                line = f"{script:28s} before {before:5.2f} s  now {now:5.2f} s  before/now {before / now:4.1f}"
                print(line, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    total_before, total_now = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all scripts once':28s} before {total_before:5.1f} s  now {total_now:5.1f} s  "
          f"before/now {total_before / total_now:4.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
