"""Send a stage's output (prints, progress bars, warnings, tracebacks) to its log file."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from unitscope.errors import UnitscopeError


@contextlib.contextmanager
def log_to(path: str | os.PathLike) -> Iterator[None]:
    """Redirect stdout and stderr (Python and file-descriptor level) to `path` for the block.

    A `UnitscopeError` (bad input, full disk) is written to the log as its one line and ends the job with exit
    status 1, without a traceback (Snakemake prints a failed job's log). Any other failure is a bug: its
    traceback goes to the log and its one-line message to the original stderr, and it propagates.

    Every workflow script runs in this block, so it also registers `gc.freeze` to run at the job's exit: the
    interpreter's last garbage collections then skip the objects torch created at import, which took 1.2 s of
    CPU in each torch job's exit on this machine (4.07 -> 2.90 s for `import torch` plus exit, issue 15).
    Reference counting still frees everything it would; only cycles left at exit are not walked.
    """
    atexit.register(gc.freeze)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    original_stderr = os.dup(2)
    original_stdout = os.dup(1)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        except UnitscopeError as err:  # the user's input or the machine: its one line says it all
            # on a line of its own (a progress bar may have left one open); Snakemake shows a failed job's log
            print(f"\n{type(err).__name__}: {err}", file=log, flush=True)
            raise SystemExit(1) from None
        except BaseException as err:  # a bug: keep the traceback
            traceback.print_exc(file=log)
            log.flush()
            os.write(original_stderr, f"{type(err).__name__}: {err} (log: {path})\n".encode())
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(original_stdout, 1)
            os.dup2(original_stderr, 2)
            os.close(original_stdout)
            os.close(original_stderr)
