"""Pruning a model whose weights are sharded across ranks (FSDP2, tensor parallelism).

Where a rank's block of each tensor sits (:mod:`.sharding`), the collectives between ranks
(:mod:`.collectives`), exact selection over shards without gathering them (:mod:`.selection`), bit-packed
masks in sharded checkpoints (:mod:`.checkpoint`), and scoring the model in place (:mod:`.scoring`).
"""
