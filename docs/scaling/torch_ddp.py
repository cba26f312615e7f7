"""Train through soft ranks with PyTorch DistributedDataParallel (the soft 0/1 loss).

Each process takes its share of every batch; softsort's backward is ordinary autograd, so
DDP averages the gradients as for any loss. Two processes on this machine (gloo backend,
loopback); on a cluster, start one process per GPU with ``torchrun`` and the ``nccl`` backend
instead, the training code is the same.

    pip install "softsort[torch]"
    python docs/scaling/torch_ddp.py [--steps 50]
"""

from __future__ import annotations

import argparse
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import softsort

FEATURES, CLASSES = 20, 5


def soft_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft 0/1 loss: how far the true class's soft rank is below the top rank (C - 1)."""
    ranks = softsort.ranks(logits, axis=-1)
    true_rank = torch.gather(ranks, 1, labels[:, None])[:, 0]
    return torch.mean(torch.relu(CLASSES - 1 - true_rank))


def train(rank: int, world: int, port: int, steps: int, batch: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same data on every process; DDP also copies rank 0's weights
        centers = 2 * torch.randn(CLASSES, FEATURES)
        model = DistributedDataParallel(torch.nn.Linear(FEATURES, CLASSES))
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for step in range(steps):
            labels = torch.randint(0, CLASSES, (batch,))
            inputs = centers[labels] + torch.randn(batch, FEATURES)
            mine = slice(rank * batch // world, (rank + 1) * batch // world)  # this process's share
            opt.zero_grad()
            loss = soft_error(model(inputs[mine]), labels[mine])
            loss.backward()  # DDP averages the gradients over the processes here
            opt.step()
            if rank == 0 and (step % 10 == 0 or step == steps - 1):
                print(f"step {step:3d}  soft 0/1 loss (rank 0's share) {loss.item():.3f}", flush=True)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with socket.socket() as s:  # a free port for the processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(train, args=(args.processes, port, args.steps, args.batch), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main()
