"""Several processes for one training loop: torch DistributedDataParallel, each rank started the way torchrun starts
it (one process per rank; RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment; ``env://``
rendezvous), from params.yaml's ``distributed`` section.

Why the stage spawns the ranks instead of being run under ``torchrun``: a stage does more than train (it loads, prunes,
evaluates and writes its outputs), and only the loop needs ranks. So the stage keeps doing all of that in its own
process, on one unwrapped model — torch-pruning's graph never sees a DDP wrapper, and no structural change happens
while one exists — and hands the model to the ranks. Each rank wraps its copy in DDP and runs
:func:`pruning.training.train_loop` on its share of every batch; rank 0 hands the trained weights and the history back
through a file in a private temporary directory, which the stage loads into its model. Complexity-aware training
(:mod:`pruning.methods.complexity_aware`) uses :func:`launch` with a loop of its own, which changes the structure as it
trains: it rebuilds the wrapper after every change, on the unwrapped network, and hands back its edits with the
weights. The stage, in the parent process, writes every output: the ranks write none.

A rank that fails (an exception, a kill, running out of memory) ends the others: torch.multiprocessing's ``spawn``
terminates them when one exits badly, so no rank waits forever in a collective; the stage then fails with one line
naming the rank.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pruning import faults
from pruning.errors import PruningError
from pruning.schema import Section

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from pruning.task import Task
    from pruning.training import Callback, Distill, Optim

RESULT = "rank0.pt"  # what rank 0 hands back, in the launch's temporary directory


class DistributedConfig(Section):
    """Training in several processes under torch DDP: the train and finetune stages and the prune step's fine-tuning
    (through :func:`fit`), complexity-aware training (through :func:`launch`)."""

    nproc: int = Field(1, ge=1, le=1024, description="training processes: 1 = this process only; more = torch DDP, "
                       "each rank on its share of every batch")
    backend: Literal["gloo", "nccl"] = Field("gloo", description="gloo (CPU; any device) | nccl (one CUDA GPU per "
                                             "rank: device must be cuda or auto)")
    timeout: int = Field(300, ge=10, le=86_400, description="seconds a rank waits for the others in a collective "
                         "before it gives up")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel, on this rank's device. Built again after every structural change:
    torch-pruning's graph and the removals work on the unwrapped model, never on the wrapper."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _rank(rank: int, world: int, backend: str, port: int, timeout: int, threads: int, out: str,
          work: Callable[..., dict[str, Any]], job: dict[str, Any]) -> None:
    """One rank, as torchrun starts it: join the group, run ``work(job, rank, world, device)``, rank 0 saves what it
    returns."""
    import torch
    import torch.distributed as dist

    from pruning.training import resolve_device

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if rank == 0:  # the epochs' lines, as the single-process loop logs them (a spawned process starts unconfigured)
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("pruning").setLevel(logging.INFO)
    torch.set_num_threads(threads)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    try:
        device = resolve_device(job.pop("device"))
        if backend == "nccl":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        faults.point(f"ddp:rank{rank}", group=False)
        result = work(job, rank, world, device)
        if rank == 0:
            torch.save(result, Path(out) / RESULT)
    finally:
        dist.destroy_process_group()


def launch(ranks: DistributedConfig, work: Callable[..., dict[str, Any]], job: dict[str, Any]) -> dict[str, Any]:
    """Run ``work(job, rank, world, device)`` (a module-level function: ranks are spawned) in ``ranks.nproc``
    processes under one process group; what rank 0's ``work`` returns (plain containers and tensors) comes back.
    ``job["device"]`` is the configured device (auto | cpu | cuda)."""
    import torch
    import torch.multiprocessing as mp

    if ranks.backend == "nccl" and torch.cuda.device_count() < ranks.nproc:
        raise PruningError(f"the nccl backend needs one CUDA GPU per rank: {ranks.nproc} ranks, "
                           f"{torch.cuda.device_count()} GPU(s) here (use gloo)")
    threads = max(1, torch.get_num_threads() // ranks.nproc)  # the cores shared by the ranks, not each rank all
    # torch warns that it stops the other ranks when one dies: the one line below says so
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="pruning-ddp-") as out:
        try:
            mp.start_processes(_rank, args=(ranks.nproc, ranks.backend, _free_port(), ranks.timeout, threads, out,
                                            work, job), nprocs=ranks.nproc, join=True, start_method="spawn")
        except mp.ProcessExitedException as exc:
            how = (f"was killed by {signal.Signals(-exc.exit_code).name}" if exc.exit_code < 0
                   else f"exited with code {exc.exit_code}")
            raise PruningError(f"training rank {exc.error_index} of {ranks.nproc} {how}; the other ranks were "
                               "stopped") from None
        except mp.ProcessRaisedException as exc:
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            raise PruningError(f"training rank {exc.error_index} of {ranks.nproc} failed: {last}") from None
        # written by rank 0 of this launch, in this private directory: plain containers, read without unpickling code
        return torch.load(Path(out) / RESULT, weights_only=True)


def _train(job: dict[str, Any], rank: int, world: int, device: torch.device) -> dict[str, Any]:
    """:func:`fit`'s work in one rank: :func:`pruning.training.train_loop` on the DDP-wrapped model."""
    from pruning.training import train_loop

    model = job.pop("model").to(device)
    history = train_loop(model, wrapped=wrap(model, device), rank=rank, world=world, device=device, **job)
    return {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}


def fit(ranks: DistributedConfig, model: nn.Module, train: Dataset, opt: Optim, seed: int, desc: str, *,
        distill: Distill | None = None, test: Dataset | None = None, callbacks: Sequence[Callback] = (),
        param_groups: list[dict[str, Any]] | None = None, device: str = "cpu",
        task: Task | None = None) -> list[dict[str, float]]:
    """:func:`pruning.training.fit`, in ``ranks.nproc`` processes when that is more than one (the trained weights are
    then loaded into ``model``)."""
    from pruning.task import CLASSIFICATION
    from pruning.training import fit as fit_here

    task = task or CLASSIFICATION
    if ranks.nproc == 1:
        return fit_here(model, train, opt, seed, desc, distill=distill, test=test, callbacks=callbacks,
                        param_groups=param_groups, device=device, task=task)
    job = {"model": model, "train": train, "opt": opt, "seed": seed, "desc": desc, "distill": distill, "test": test,
           "callbacks": list(callbacks), "param_groups": param_groups, "device": device, "task": task}
    result = launch(ranks, _train, job)
    model.load_state_dict(result["state"])
    return result["history"]
