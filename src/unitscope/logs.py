"""Send a stage's output (prints, progress bars, warnings, tracebacks) to its log file."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def log_to(path: str | os.PathLike) -> Iterator[None]:
    """Redirect stdout and stderr (Python and file-descriptor level) to `path` for the block.

    A failure's traceback is written to the log before it propagates, so the log says why a job died;
    the exception's one-line message is also echoed to the original stderr for the terminal.
    """
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
        except BaseException as err:
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
