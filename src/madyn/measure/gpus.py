"""Which GPU a measuring job uses on a box with several.

Snakemake counts GPUs (every measuring job on CUDA declares ``gpu=1``; ``--resources gpu=N``
caps how many run at once) but does not say which GPU a local job gets, and ``cuda`` means
GPU 0 to every job. So each job claims the first GPU that no other madyn job of this user
holds, with an exclusive ``flock`` on a lock file per GPU, kept while it measures. The
operating system releases a lock when its holder exits, killed or not, so a crashed job
never strands a GPU. On a SLURM node each job sees only the GPUs it was given
(``CUDA_VISIBLE_DEVICES``), so with one visible GPU nothing is claimed.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from madyn.settings import resolve_device

# lock files, one per GPU index, shared by every madyn job of this user on this machine
LOCK_DIR = Path(tempfile.gettempdir()) / f"madyn-gpus-{os.getuid()}"


def visible_gpus() -> int:
    """Number of CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``path``, or None if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _claim(n: int, lock_dir: Path, poll_s: float, say: Callable[[str], None]
           ) -> tuple[int, int]:
    """Block until one of GPUs 0..n-1 is free: (its index, the descriptor holding it)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for i in range(n):
            fd = _try_lock(lock_dir / f"gpu{i}.lock")
            if fd is not None:
                return i, fd
        if not waited:
            say(f"all {n} GPUs are held by other madyn jobs ({lock_dir}); waiting")
            waited = True
        time.sleep(poll_s)


@contextmanager
def claimed_device(device: str, n_gpus: int | None = None, lock_dir: Path = LOCK_DIR,
                   poll_s: float = 1.0, say: Callable[[str], None] = print
                   ) -> Iterator[str]:
    """The torch device a job measures on, held for the ``with`` block.

    ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:K``. ``cuda`` (or ``auto`` with a
    GPU) and more than one visible GPU: ``cuda:I`` for the first GPU I not held by another
    job, waiting (every ``poll_s`` seconds) while all are held. ``cpu``, an explicit
    ``cuda:K`` and a single GPU are returned as they are (``auto`` resolved by
    :func:`madyn.settings.resolve_device`).
    ``n_gpus``: the visible GPU count (default: asked of torch).
    """
    n = visible_gpus() if n_gpus is None else n_gpus
    device = resolve_device(device, n)
    if device != "cuda" or n <= 1:
        yield device
        return
    i, fd = _claim(n, lock_dir, poll_s, say)
    try:
        yield f"cuda:{i}"
    finally:
        os.close(fd)  # closing the descriptor releases the lock
