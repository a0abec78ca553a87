"""Which Trainer strategies the callbacks run under, checked before any work is done.

Pruning runs on one device, under DDP (also spawned, as in notebooks), and under ``ModelParallelStrategy``,
where parameters are DTensors (FSDP2's ``fully_shard``, tensor parallelism) that are pruned shard by shard.
FSDP1 (``FSDPStrategy``) flattens parameters into views of one buffer and DeepSpeed partitions them its own
way; both are refused, as is XLA, which is untested.
"""

from __future__ import annotations

from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    Strategy,
    XLAStrategy,
)

SUPPORTED = (
    "a single device, DDP (strategy='ddp', 'ddp_spawn', 'ddp_notebook', 'ddp_find_unused_parameters_true'), or"
    " ModelParallelStrategy (fully_shard / parallelize_module in configure_model)"
)


def is_sharded_strategy(strategy: Strategy) -> bool:
    """Parameters are DTensors, pruned shard by shard: ``ModelParallelStrategy``."""
    return isinstance(strategy, ModelParallelStrategy)


def check_strategy(strategy: Strategy, owner: str = "PruneAtInit") -> None:
    """Raise if ``strategy`` is one ``owner`` cannot run under, naming it and what is supported."""
    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy)):
        raise ValueError(
            f"{owner} does not support strategy {type(strategy).__name__}, which holds parameters as flattened or"
            f" partitioned views; shard the model with ModelParallelStrategy instead (fully_shard in"
            f" configure_model, FSDP2), which it prunes shard by shard. Supported: {SUPPORTED}"
        )
    supported = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(
        strategy, (XLAStrategy, SingleDeviceXLAStrategy)
    )
    if not (supported or is_sharded_strategy(strategy)):
        raise ValueError(f"{owner} does not support strategy {type(strategy).__name__}: it runs on {SUPPORTED}")
