"""QAT across processes with torch.distributed: the student and the teacher sharded with FSDP2
(``fully_shard``, one unit per block, then the root), each process training on its share of every
batch (FSDP2 averages the gradients). Run the same ``gemma-edge qat`` command under ``torchrun``:
gloo on CPU, nccl on GPUs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_from_env", "rank_world", "shard", "full_copy"]


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); False when run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return True


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def shard(student: nn.Module, teacher: nn.Module, grad_checkpoint: bool) -> None:
    """FSDP2 over both models, in place; activation checkpointing per block through the composable
    checkpoint, which FSDP2's own hooks see (a recomputed block gathers its weights again)."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import fully_shard

    for model in (student, teacher):
        for layer in model.backbone.layers:
            if grad_checkpoint and model is student:
                checkpoint(layer)
            fully_shard(layer)
        fully_shard(model)


def full_copy(student: nn.Module, like: nn.Module) -> nn.Module:
    """The sharded student's full weights loaded into ``like`` (an unsharded module of the same
    structure), on every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    like.load_state_dict({k: v.detach().cpu() for k, v in sd.items()})
    return like
