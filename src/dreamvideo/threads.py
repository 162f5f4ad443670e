"""CPU threads of torch: a default that does not collapse when other processes share the cores.

torch's default (one thread per core) spins OpenMP workers that wait for each other; with other CPU-bound
processes on the same cores every step waits for the slowest descheduled thread, and a step measured 30x slower
on 2 shared cores. Half the cores (at least 1, at most 8) keeps most of the idle-machine speed and degrades to a
fair share under load; ``benchmarks/bench_threads.py`` measures both.
"""

from __future__ import annotations

import os

MAX_DEFAULT_THREADS = 8


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Half the available cores, at least 1 and at most :data:`MAX_DEFAULT_THREADS`; ``OMP_NUM_THREADS`` wins."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(MAX_DEFAULT_THREADS, available_cores() // 2))


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_threads`); return the number set.

    Args:
        threads: the ``--threads`` value.
    """
    import torch

    n = threads or default_threads()
    torch.set_num_threads(n)
    return n
