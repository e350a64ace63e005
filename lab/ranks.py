"""
More than one process: `torchrun --nproc_per_node K script.py ...` runs K ranks that each take a share of
every batch and add up their gradients (the scripts mark these lines "ranks:"); alone, a script is rank 0 of
1 and every function here does nothing.

    start_ranks          join the process group (nccl for CUDA, gloo otherwise)
    rank_share           a rank's share of a batch's problems
    sum_gradients        every rank's gradients summed (or averaged), in one message
    sum_over_ranks, mean_over_ranks, gather, wait_for_ranks     numbers and values across ranks
    end_ranks            leave the process group cleanly at the end

A reader of the method may skip it: with one process (the default) every function here does nothing.
"""
import os
import sys

import torch
import torch.distributed as dist

from lab.runtime import device_type


def start_ranks(device):
    """(rank, world size, device): under torchrun, join the process group (nccl for CUDA, gloo otherwise)
    and put each rank on its own GPU of the machine; alone, (0, 1, device) and nothing else happens."""
    if "RANK" not in os.environ:
        return 0, 1, device
    if device_type(device) == "mps":
        sys.exit("error: torchrun on Apple MPS is not supported (its gloo backend cannot carry MPS tensors); "
                 "run one process, or pass --device cpu")
    cuda = device_type(device) == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            gpus = torch.cuda.device_count()
            sys.exit(f"error: process LOCAL_RANK={local} but only {gpus} CUDA GPU(s) are visible; give "
                     f"torchrun --nproc_per_node {gpus} or fewer")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if cuda:  # device_id: nccl binds this process to its GPU at once (no guessing, no hang at the barrier)
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def rank_share(items, rank, ranks):
    """Rank's contiguous share of a list (all of it when alone): rl.py gives each rank whole groups."""
    return items[rank * len(items) // ranks:(rank + 1) * len(items) // ranks]


def under_torchrun():
    """Whether this process is one of several ranks (start_ranks has joined the process group)."""
    return dist.is_available() and dist.is_initialized()


def sum_over_ranks(values):
    """A list of floats summed over every rank (every rank gets the sums); as it is when alone."""
    if not under_torchrun():
        return values
    on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # where the backend's messages live
    total = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(total)
    return total.tolist()


def mean_over_ranks(values):
    """A dict of numbers (or None) averaged over the ranks that have a number; as it is when alone."""
    if not under_torchrun():
        return values
    sums = sum_over_ranks([x for v in values.values() for x in ((v, 1.0) if v is not None else (0.0, 0.0))])
    return {k: sums[2 * i] / sums[2 * i + 1] if sums[2 * i + 1] else None for i, k in enumerate(values)}


def gather(value):
    """[every rank's value], in rank order ([value] when alone)."""
    if not under_torchrun():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def sum_gradients(model, divide_by=1):
    """Every rank's gradients replaced by their sum over ranks (divided by divide_by: ranks for their mean),
    in one message; nothing when alone."""
    if not under_torchrun():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= divide_by
    for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(summed.view_as(g))


def end_ranks():
    """At the end of a script: every rank waits for the others, then leaves the process group. Left to the
    interpreter's exit, the group's threads could be torn down while still running, and a rank then aborts
    (SIGABRT, "terminate called without an active exception", about 1 run in 12 of tests/test_ranks.py's
    RL test on 2 cores). Nothing when alone."""
    if under_torchrun():
        dist.barrier()
        dist.destroy_process_group()


def wait_for_ranks():
    """Every rank waits here until all have arrived (nothing when alone)."""
    if under_torchrun():
        dist.barrier()
