"""The Lightning wing: the only part of the package that imports ``lightning``.

The ``PruneAtInit`` callback and its life cycle (:mod:`.callback`), its argument types (:mod:`.arguments`),
what a fit does to the model (:mod:`.fit_pruning`), the masks in checkpoints (:mod:`.checkpointing`),
diagnostics (:mod:`.diagnostics`), batches as training sees them, supported strategies, spawned workers and
scoring without side effects. Imports of the ``lightning`` dependency are absolute, so they never resolve to
this subpackage.
"""
