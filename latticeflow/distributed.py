"""MPI multi-process runs: the world from mpi4py, torch.distributed for data-parallel training,
seeds per rank, the gradient all-reduce and clean shutdown.

Launched by ``mpiexec -n N`` (or ``srun``), every process is one rank of an MPI world; otherwise the
world is one process and nothing here imports mpi4py or torch.distributed. Data-parallel training
splits a global batch of B configurations into N contiguous slices of B/N; every rank draws the same
global batch from the shared seed and keeps its slice, so N ranks reproduce the one-process gradient:
mean_B g = (1/N) Σ_r mean_{B/N} g_r (the all-reduce sums, then divides by N). Sampling gives every rank
its own seed stream (:func:`seed_for_rank`) and its own shard file (see :mod:`latticeflow.pipeline.shards`).

torch.distributed runs gloo on CPU and nccl on CUDA (one GPU per local rank); rank, size and the
rendezvous address come from MPI (rank 0 picks a free port and broadcasts it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["find_mpiexec", "launch_env", "World", "get_world", "single_process", "launched_by_mpi", "launcher_size",
           "seed_for_rank", "init_torch_distributed",
           "all_reduce_step", "broadcast_module", "shutdown", "abort_on_error", "collective_check",
           "MPI_ENV_VARS"]

#: environment variables by which MPI launchers announce a multi-process job (MPICH/Hydra and PMI-2
#: launchers such as srun set PMI_*, Open MPI sets OMPI_*, PMIx launchers PMIX_RANK, MVAPICH MV2_*)
MPI_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "MV2_COMM_WORLD_SIZE")


def _slurm_tasks() -> int | None:
    """Tasks of the current Slurm job step (``srun -n N`` starts N copies of the command)."""
    try:
        return int(os.environ["SLURM_STEP_NUM_TASKS"])
    except (KeyError, ValueError):
        return None


def launched_by_mpi() -> bool:
    """True if an MPI launcher started this process (``LATTICEFLOW_MPI=0|1`` overrides)."""
    forced = os.environ.get("LATTICEFLOW_MPI")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    return any(v in os.environ for v in MPI_ENV_VARS) or (_slurm_tasks() or 1) > 1


def launcher_size() -> int | None:
    """World size announced by the launcher's environment, if any."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                return None
    return _slurm_tasks()  # PMIx and plain srun announce no size of their own


@dataclass
class World:
    """Rank and size of this process; ``comm`` is the mpi4py ``COMM_WORLD`` (None without MPI)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    comm: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics, master files and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (``MPI_Abort``); a plain exit without MPI."""
        if self.comm is not None:
            self.comm.Abort(code)
        raise SystemExit(code)

    def device(self, name: str) -> torch.device:
        """The torch device of this rank: under MPI ``cuda`` (or ``cuda:N``) becomes ``cuda:<local rank>``,
        one GPU per rank, as nccl requires; more ranks per node than GPUs is an error."""
        dev = torch.device(name)
        if dev.type == "cuda" and self.distributed and torch.cuda.is_available():
            n_gpu = torch.cuda.device_count()
            if self.local_size > n_gpu:
                raise RuntimeError(f"device {name!r}: {self.local_size} ranks on this node but {n_gpu} GPU(s); "
                                   f"start at most one rank per GPU")
            return torch.device("cuda", self.local_rank)
        return dev


_WORLD: World | None = None


def get_world() -> World:
    """The MPI world of this process (cached); one rank when not launched by an MPI launcher.

    Under a launcher without mpi4py, or with a launcher whose MPI differs from the one mpi4py was
    built against (so that every process believes it is rank 0 of 1), this raises instead of
    silently running N copies of a one-process job.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not launched_by_mpi():
        _WORLD = World()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("started by an MPI launcher but mpi4py is not installed: pip install mpi4py "
                           "(built against the MPI of your mpiexec), or set LATTICEFLOW_MPI=0") from None
    comm = MPI.COMM_WORLD
    announced = launcher_size()
    if announced is not None and announced != comm.size:
        raise RuntimeError(f"the launcher started {announced} processes but MPI reports a world of {comm.size}: "
                           f"mpiexec and mpi4py belong to different MPI libraries")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    _WORLD = World(rank=comm.rank, size=comm.size, local_rank=local.rank, local_size=local.size, comm=comm)
    local.Free()
    return _WORLD


@contextlib.contextmanager
def single_process() -> Iterator[World]:
    """Within the block `get_world()` is a world of one rank (rank 0 of 1, no communicator): this rank runs a job
    of its own (a point of `latticeflow scan`) without any collective, as a one-process run would (the config's
    seed itself, no shard files, its own directory lock). The process's world is restored afterwards."""
    global _WORLD
    saved = _WORLD
    _WORLD = World()
    try:
        yield _WORLD
    finally:
        _WORLD = saved


def seed_for_rank(seed: int, rank: int) -> int:
    """Independent seed of ``rank``: ``seed`` itself on rank 0 (one rank = the serial run), otherwise a
    31-bit seed from ``numpy.random.SeedSequence((seed, rank))``."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence((int(seed), int(rank))).generate_state(1, np.uint32)[0] >> 1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def init_torch_distributed(world: World, device: torch.device | str = "cpu") -> str | None:
    """Join the torch.distributed process group of ``world`` (gloo on CPU, nccl on CUDA).

    Returns the backend, or None for a one-rank world. The rendezvous is rank 0's host (127.0.0.1
    when all ranks share a node; ``MASTER_ADDR`` overrides) and a free port chosen by rank 0.
    """
    if not world.distributed:
        return None
    import torch.distributed as dist

    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if dist.is_initialized():
        return dist.get_backend()
    if world.is_main:
        # the host name, not its address: on many systems it resolves to a loopback address locally
        addr = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if world.local_size == world.size
                                                 else socket.gethostname())
        port = int(os.environ.get("MASTER_PORT") or _free_port())
    else:
        addr, port = None, None
    addr, port = world.bcast((addr, port))
    if backend == "nccl":
        torch.cuda.set_device(world.device("cuda"))
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=world.rank, world_size=world.size)
    return backend


def all_reduce_step(params: list[torch.nn.Parameter], values: torch.Tensor, rows: torch.Tensor,
                    world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """The one collective of a data-parallel training step: a single all-reduce (sum) that leaves in
    every ``p.grad`` its mean over the ranks, returns the mean over the ranks of ``values`` (k,) and
    gathers every rank's ``rows`` (m,) into ``(size, m)`` (each rank fills its own slot, zeros elsewhere).

    ``params`` must be the same list on every rank; a parameter without a gradient on this rank (one the loss
    does not reach) contributes zeros and keeps ``grad`` None. A rank whose loss was non-finite still sends
    its (non-finite) gradients: the global loss is then non-finite too and every rank skips the step.
    """
    if not world.distributed:
        return values, rows.reshape(1, -1)
    import torch.distributed as dist

    ref = params[0] if params else values
    k, m = values.numel(), rows.numel()
    sizes = [p.numel() for p in params]
    n_grad = sum(sizes)
    flat = torch.zeros(n_grad + k + world.size * m, dtype=ref.dtype, device=ref.device)
    offset = 0
    for p, n in zip(params, sizes):
        if p.grad is not None:
            flat[offset:offset + n] = p.grad.reshape(-1)
        offset += n
    flat[n_grad:n_grad + k] = values
    slot = n_grad + k + world.rank * m
    flat[slot:slot + m] = rows.reshape(-1)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, n in zip(params, sizes):
        if p.grad is not None:
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad)).div_(world.size)
        offset += n
    return flat[n_grad:n_grad + k] / world.size, flat[n_grad + k:].view(world.size, m)


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def shutdown(world: World | None = None) -> None:
    """Leave torch.distributed cleanly (barrier first: without it some runs abort at exit)."""
    world = world or _WORLD
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    elif world is not None:
        world.barrier()


def collective_check(world: World, problem: str | None, error: type[Exception] = ValueError) -> None:
    """Collective: every rank passes its ``problem`` (None if it has none); if any rank has one, every rank raises
    ``error`` with the first (lowest rank's) problem, its ``collective_rank`` attribute naming that rank. So a
    refusal found by one rank stops every rank before it writes, and none is left waiting in a collective."""
    problems = world.allgather(problem)
    for rank, found in enumerate(problems):
        if found is not None:
            err = error(found)
            err.collective_rank = rank  # type: ignore[attr-defined]
            raise err


def abort_on_error(world: World, message: str, code: int = 1) -> None:
    """Print ``message`` naming this rank and end the whole job (no rank is left waiting). The output-directory
    locks this process holds are released first (``MPI_Abort`` skips ``finally`` blocks)."""
    from .io.lock import release_held_locks

    release_held_locks()
    print(f"latticeflow: error on rank {world.rank} of {world.size}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if world.size > 1:  # let the launcher forward the line first: MPI_Abort's kill can race it (seen once in CI)
        time.sleep(0.5)
    world.abort(code)


def find_mpiexec() -> str:
    """``mpiexec`` of this Python environment (the ``mpich`` wheel installs one), else from PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise FileNotFoundError("bench scaling needs mpiexec: pip install mpich (or load your site's MPI) and mpi4py")
    return found


def launch_env() -> dict[str, str]:
    """This environment for a child ``mpiexec`` job: without a surrounding MPI job's variables, one OpenMP
    thread per rank."""
    prefixes = ("PMI_", "PMIX_", "OMPI_", "MPI_", "HYDRA_", "MV2_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("LATTICEFLOW_MPI", None)
    return env
