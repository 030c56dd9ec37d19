"""What every workflow script does first: send Python's logging, warnings and prints to the rule's log file."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import time


def limit_threads(threads: int) -> None:
    """torch's intra-op threads (and OpenMP's/MKL's) to the job's: through the environment, read when torch
    starts, so a job that never needs torch (tables, figures, heatmaps) does not import it (2-5 s a job); and
    directly where the script has imported it already."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@contextlib.contextmanager
def job(snakemake):
    """Run a job body with output going to snakemake.log[0] and torch limited to the job's threads; the log ends
    with the job's wall time and peak memory (rules cached between workflows have no benchmark file)."""
    log_path = snakemake.log[0] if len(snakemake.log) else os.devnull
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with (
        open(log_path, "w", encoding="utf-8") as handle,
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
    ):
        logging.basicConfig(stream=handle, level=logging.INFO, force=True)
        logging.captureWarnings(True)
        limit_threads(max(1, int(getattr(snakemake, "threads", 1))))
        start = time.monotonic()
        try:
            yield
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            logging.info("job done: %.1f s wall, peak RSS %.0f MiB", time.monotonic() - start, peak_mib)
        except Exception:
            logging.exception("job failed")
            raise
        finally:
            sys.stdout.flush()
