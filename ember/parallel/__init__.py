"""Process groups, and DDP / FSDP2 applied to a plain model as transforms.

>>> import torch
>>> from ember.parallel import apply_ddp, init_distributed
>>> info = init_distributed("cpu")  # no torchrun environment: one process, no group
>>> info.world_size, apply_ddp(torch.nn.Linear(2, 2), info).__class__.__name__
(1, 'Linear')
"""

from ember.parallel.distributed import (
    DistInfo,
    all_reduce_mean,
    apply_ddp,
    apply_fsdp,
    barrier,
    broadcast_object,
    destroy_distributed,
    init_distributed,
    is_fsdp,
    no_sync,
    unwrap,
)
from ember.parallel.state_dict import (
    full_optim_state_dict,
    full_state_dict,
    load_full_optim_state_dict,
    load_full_state_dict,
)

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "apply_ddp",
    "apply_fsdp",
    "barrier",
    "broadcast_object",
    "destroy_distributed",
    "full_optim_state_dict",
    "full_state_dict",
    "init_distributed",
    "is_fsdp",
    "load_full_optim_state_dict",
    "load_full_state_dict",
    "no_sync",
    "unwrap",
]
