"""What a launcher started, checked against what its config asked for.

accelerate (1.x, accelerate/state.py) enables FSDP and DeepSpeed only on GPU-type backends: launched
on CPU processes with configs/accelerate/fsdp.yaml, it starts plain multi-CPU data parallel. The run
is still exact (kdbench sums gradients itself), but every rank holds the whole model and optimizer,
which a user who asked for sharding must be told (docs/scaling.md).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("kdbench")


def warn_if_not_sharded(acc) -> None:
    """Warn when the launch environment asked for FSDP / DeepSpeed but `acc` runs something else."""
    from accelerate.utils import DistributedType

    for env, kind in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                      ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(env, "false").lower() == "true" and acc.distributed_type != kind:
            log.warning("%s was requested (%s) but accelerate started %s (it enables %s only on GPUs): training "
                        "as plain data parallel, every process holding the whole model", kind.value, env,
                        acc.distributed_type, kind.value)
