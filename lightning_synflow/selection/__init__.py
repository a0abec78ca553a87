"""What a pruning round keeps: the selectors and the one loop over a budget's rankings.

The selector contract and :func:`~lightning_synflow.selection.selector.select_within` (:mod:`.selector`),
exact top-k within a budget (:mod:`.topk`), the living weights narrowed round by round (:mod:`.alive`), N:M
groups (:mod:`.granularity`), coupled channels and ``shrink`` (:mod:`.channels`), and 2:4 weights for GPU
kernels (:mod:`.semi_structured`). Each selector turns the units it keeps into masks.
"""
