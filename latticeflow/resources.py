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
"""
from __future__ import annotations

import math
import os
import sys

__all__ = ["memory_bytes", "available_cores", "local_ranks", "default_threads", "parse_threads",
           "configure_threads", "memory_problem"]

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
