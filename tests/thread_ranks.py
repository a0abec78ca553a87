"""Ranks as threads in one process, exchanging through a barrier: collectives without a process group, so
that many layouts and cases run fast inside pytest (real gloo groups run in subprocess scripts)."""

import threading

import torch


class ThreadCollectives:
    """Rank ``rank``'s collectives: ``sum`` (an all-reduce; also ``all_reduce``) and ``gather`` (1-D tensors of any
    length, concatenated in rank order), each call made by every rank in the same order."""

    def __init__(self, world, rank):
        self.world, self.rank = world, rank

    def _exchange(self, t):
        self.world.slots[self.rank] = t
        self.world.barrier.wait()
        out = list(self.world.slots)
        self.world.barrier.wait()
        return out

    def sum(self, t):
        return torch.stack(self._exchange(t.clone())).sum(0)

    all_reduce = sum

    def gather(self, t):
        return torch.cat(self._exchange(t))


class _World:
    def __init__(self, size):
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots = [None] * size


def run_ranks(fn, world_size=2):
    """``[fn(rank, collectives) for each rank]``, the ranks running at once as threads; the first error is raised."""
    world, results, errors = _World(world_size), [None] * world_size, []

    def target(rank):
        try:
            results[rank] = fn(rank, ThreadCollectives(world, rank))
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)
            world.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
