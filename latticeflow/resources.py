"""What the machine gives a run: compute threads (never more than the cores this process may run on) and
memory (the bound of the config's lattice-size check).

``latticeflow`` sets torch's intra-op threads once per command, before any torch work: ``--threads N``
if given, else the config's ``threads:`` key, else ``min(torch's default, available cores)``, where the
available cores are those of the process's CPU affinity (``os.sched_getaffinity``: ``taskset``, Slurm,
``mpiexec --bind-to``), further limited by a cgroup CPU quota (containers) and, when MPI ranks share an
unbound host, divided among the ranks on that host.

OpenMP's wait policy is left to the user: ``OMP_WAIT_POLICY=PASSIVE`` helps on a machine busy with other
work (spinning threads wait at barriers for a thread that is not scheduled) but made training 45 % slower on
an idle 2-core machine (quickstart, 200 steps, 2 threads: 49 s against 33 s), so it is not the default;
``--threads 1`` is the advice for shared machines.

glibc's allocator returns freed memory at the top of its heap to the kernel once more than a trim threshold
(twice its dynamic mmap threshold, a few MB at most) is free, and serves blocks above the mmap threshold by
fresh mappings; a sampler that frees and reallocates ~0.5 MB tensors every leapfrog step then page-faults on
every one. ``latticeflow`` therefore raises both thresholds once per command (:func:`keep_heap`): HMC on a
64 × 64 lattice, 16 chains, float64, 2 threads, went from ~620 to ~1900 trajectories/s (4.3 million page
faults and 14 s of system time in a 33 s run before).
"""
from __future__ import annotations

import math
import os
import sys

__all__ = ["memory_bytes", "available_cores", "local_ranks", "default_threads", "parse_threads",
           "configure_threads", "memory_problem", "keep_heap"]

#: environment variables by which MPI launchers announce the number of ranks on this host
#: (Open MPI, MPICH/Hydra, MVAPICH; srun binds its tasks to cores, which the affinity already shows)
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _cgroup_quota() -> int | None:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``, e.g. ``docker --cpus 2``), rounded up; None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def memory_bytes() -> int | None:
    """Physical memory of this machine, or a smaller cgroup v2 limit (``memory.max``); None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total if total > 0 else None


def local_ranks() -> int:
    """MPI ranks on this host as announced by the launcher's environment (1 outside MPI)."""
    for var in LOCAL_SIZE_VARS:
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return 1


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, a cgroup quota, and, when the process is not bound to a
    subset of the host (an unbound ``mpiexec``), the host's cores divided among its MPI ranks."""
    n = _affinity()
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, quota)
    ranks = local_ranks()
    if ranks > 1 and n >= (os.cpu_count() or n):  # not bound: share the host among its ranks
        n = n // ranks
    return max(1, n)


def parse_threads(value, where: str = "--threads") -> int | None:
    """``None`` or an integer >= 1 (a string from the command line is converted); anything else is a
    one-line ``ValueError`` naming ``where``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{where} must be an integer >= 1, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def default_threads(torch_default: int) -> int:
    """``min(torch_default, available_cores())``."""
    return max(1, min(torch_default, available_cores()))


_configured: int | None = None

#: mallopt parameters of glibc (malloc.h) and the value `keep_heap` gives each: blocks up to 32 MB (glibc's
#: largest threshold) come from the heap, and up to 512 MB of free heap stay mapped for reuse
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_HEAP_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 512 << 20), (_M_TOP_PAD, 64 << 20))


def keep_heap() -> bool:
    """Keep freed memory in the process instead of returning it to the kernel at every free (glibc's
    ``mallopt``: mmap threshold 32 MB, trim threshold 512 MB, top pad 64 MB; module docstring). Returns True
    where it applied, False elsewhere (another C library, macOS, Windows) or where the user set any
    ``MALLOC_*_`` tuning variable of glibc, which is left to rule.

    Example:
        >>> keep_heap() in (True, False)
        True
    """
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without glibc's mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _HEAP_SETTINGS)


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (or :func:`default_threads`) and its inter-op threads to at most
    as many; returns the intra-op count. The inter-op pool can be sized only before it starts: later calls
    leave it alone."""
    global _configured
    import torch

    if _configured is None:
        _configured = torch.get_num_threads()  # torch's own default (OMP_NUM_THREADS or the host's cores)
    threads = n if n is not None else default_threads(_configured)
    torch.set_num_threads(threads)
    try:
        if torch.get_num_interop_threads() > threads:
            torch.set_num_interop_threads(threads)
    except RuntimeError:  # the inter-op pool has started already (a second call in one process)
        pass
    if n is not None and n > available_cores():
        print(f"latticeflow: warning: {n} threads on {available_cores()} available cores; threads beyond the "
              f"cores slow torch down", file=sys.stderr)
    return threads


def memory_problem(sites: int, dtype: str, batch: int, key: str) -> str | None:
    """Why a batch of ``batch`` configurations of ``sites`` numbers in ``dtype`` (set by config key ``key``) cannot
    fit in this machine's memory (`memory_bytes`), or None if it can (or the memory is unknown)."""
    total = memory_bytes()
    per = sites * (4 if dtype == "float32" else 8)
    if total is None or per * batch <= total:
        return None
    return (f"{per / 1e9:.3g} GB per {dtype} configuration, {per * batch / 1e9:.3g} GB for a batch of {batch} "
            f"({key}), more than the {total / 1e9:.3g} GB of this machine")
