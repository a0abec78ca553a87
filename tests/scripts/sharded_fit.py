"""PruneAtInit under ModelParallelStrategy on CPU processes (gloo), in every layout it makes: prune, train, save,
resume.

Launched by tests/test_sharded_fit.py as a subprocess (Lightning starts the other ranks). Layouts (MODES):
FSDP2 over 2 ranks; Lightning's default strategy on 2 devices (a 1 x 2 data x tensor parallel mesh) with
tensor parallelism, and with FSDP2 over its "data_parallel" slice only (a whole replica on each rank: the
issue's 16-64-64-4 MLP); HSDP on a 2 x 2 (replicate x shard) mesh; FSDP2 over tensor parallelism on a 2 x 2
mesh (``_StridedShard``). For each case in turn: fit 4 steps with PruneAtInit (the model sharded in
``configure_model``), check after every step that each rank's pruned weights are exactly zero, save a
checkpoint (distributed or full), then resume it in a fresh Trainer and model for 2 more steps. Each rank
saves what the test compares (``full_tensor`` of masks and weights: the test's view, never the library's).
Usage: sharded_fit.py OUT_DIR MODE:SCORER:distributed|full[,...]  (modes of one world size)
"""

import os
import sys

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lightning_helpers import MemoryLogger  # noqa: E402
import lightning_synflow.lightning.fit_pruning  # noqa: E402
from lightning_synflow import PruneAtInit, PruningDiagnostics, Random  # noqa: E402
from lightning_synflow.masks import BoundMasks  # noqa: E402
from lightning_synflow.report import sparsity_report  # noqa: E402
from lightning_synflow.distributed.sharding import local  # noqa: E402

SPARSITY = {"replicas": 0.9}  # the case; 0.8 elsewhere
ITERATIONS = {"synflow": 3, "snip": 1, "magnitude": 1, "random": 1}
#: mode -> processes it runs on.
MODES = {"fsdp": 2, "tp": 2, "replicas": 2, "hsdp": 4, "2d": 4}


def sparsity_of(mode):
    return SPARSITY.get(mode, 0.8)


def data_ranks(mode):
    """The ranks whose batches are the distinct ones (Lightning's sampler splits the data over the
    "data_parallel" mesh dimension only): one process scores their union."""
    return {"fsdp": [0, 1], "tp": [0], "replicas": [0], "hsdp": [0, 1, 2, 3], "2d": [0, 2]}[mode]


def scorer_of(name):
    """Seeded random scores, so that the one-process run draws the same ones."""
    return Random(seed=0) if name == "random" else name


def full(t):
    """A copy of the whole tensor (``full_tensor`` of a replicated DTensor shares its memory)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


class Net(LightningModule):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        torch.manual_seed(0)  # the same initial weights on every rank and in the test's one-process run
        if mode == "replicas":
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        else:
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 32),
                                     nn.ReLU(), nn.Linear(32, 4))
        self.example_input_array = torch.zeros(1, 16)

    def configure_model(self):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        plan = {"0": ColwiseParallel(), "2": RowwiseParallel(), "4": ColwiseParallel(), "6": RowwiseParallel()}
        if self.mode == "tp":
            parallelize_module(self.net, self.device_mesh["tensor_parallel"], plan)
            return
        mesh = self.device_mesh["data_parallel"]  # FSDP2 as Lightning's guide does
        if self.mode == "hsdp":
            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
        if self.mode == "2d":
            parallelize_module(self.net, self.device_mesh["tensor_parallel"], plan)
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(64, 16, generator=g), torch.randint(4, (64,), generator=g))
        return DataLoader(data, batch_size=4)


class Watch(Callback):
    """Records the unpruned weights as PruneAtInit (the next callback) gets them, and after every step whether
    this rank's pruned weights are all exactly zero."""

    def __init__(self, pruner):
        self.pruner, self.init, self.zero_after_step, self.report = pruner, None, [], None

    def on_fit_start(self, trainer, pl_module):
        self.init = {n: full(p) for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        self.zero_after_step.append(all(
            bool((local(params[n]).detach()[~local(m)] == 0).all()) for n, m in self.pruner.masks.items()
        ))

    def on_train_end(self, trainer, pl_module):
        report = sparsity_report(pl_module, self.pruner.masks, frozen=())  # every rank, with collectives
        measured = BoundMasks(pl_module, self.pruner.masks).measured_density()
        self.report = {"kept": report.kept, "total": report.total, "per_tensor": [t.kept for t in report.tensors],
                       "measured_density": measured}


class Record:
    """Stands in for prune_masks inside the callback, to keep the batches this rank scored with."""

    def __init__(self, prune_masks):
        self.prune_masks, self.batches, self.calls = prune_masks, None, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.batches = None if kwargs.get("dataloader") is None else [[t.clone() for t in b] for b in kwargs["dataloader"]]
        return self.prune_masks(*args, **kwargs)


def trainer(mode, kind, steps, callbacks, logger=False):
    sizes = {"fsdp": dict(data_parallel_size=2, tensor_parallel_size=1), "hsdp": dict(data_parallel_size=4, tensor_parallel_size=1),
             "2d": dict(data_parallel_size=2, tensor_parallel_size=2)}.get(mode, {})  # tp, replicas: the defaults
    strategy = ModelParallelStrategy(**sizes, save_distributed_checkpoint=kind == "distributed")
    return Trainer(accelerator="cpu", devices=MODES[mode], strategy=strategy, max_steps=steps, logger=logger,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=callbacks)


def run(out, mode, kind, scorer):
    record = Record(lightning_synflow.lightning.fit_pruning.prune_masks)
    lightning_synflow.lightning.fit_pruning.prune_masks = record
    try:
        pruner = PruneAtInit(scorer=scorer_of(scorer), sparsity=sparsity_of(mode), iterations=ITERATIONS[scorer], verbose=False)
        watch = Watch(pruner)
        model = Net(mode)
        logger = MemoryLogger()
        diagnostics = PruningDiagnostics(log_jacobian=False, log_effective_sparsity=False, log_per_tensor=True)
        first = trainer(mode, kind, 4, [diagnostics, watch, pruner], logger)
        first.fit(model)
        path = os.path.join(out, f"{mode}-{kind}-{scorer}.ckpt")
        first.save_checkpoint(path)
        saved = {"masks": {n: full(m) for n, m in pruner.masks.items()},
                 "layouts": {n: str(getattr(m, "placements", None)) for n, m in pruner.masks.items()},
                 "param_layouts": {n: str(getattr(p, "placements", None)) for n, p in model.named_parameters()},
                 "init": watch.init, "trained": {n: full(p) for n, p in model.named_parameters()},
                 "zero_after_step": watch.zero_after_step, "batches": record.batches, "scored": record.calls,
                 "report": watch.report, "logged": logger.rows}

        resumed_pruner = PruneAtInit(scorer=scorer_of(scorer), sparsity=sparsity_of(mode), iterations=ITERATIONS[scorer], verbose=False)
        resumed_watch = Watch(resumed_pruner)
        resumed_model = Net(mode)
        second = trainer(mode, kind, 6, [resumed_watch, resumed_pruner])
        second.fit(resumed_model, ckpt_path=path)
        saved.update(resumed_masks={n: full(m) for n, m in resumed_pruner.masks.items()},
                     resumed_zero_after_step=resumed_watch.zero_after_step, scored_in_total=record.calls,
                     resumed_trained={n: full(p) for n, p in resumed_model.named_parameters()},
                     checkpoint_is_dir=os.path.isdir(path),
                     masks_dir=sorted(os.listdir(os.path.join(path, "pruning_masks"))) if os.path.isdir(path) else None)
        torch.save(saved, os.path.join(out, f"{mode}-{kind}-{scorer}-rank{first.global_rank}.pt"))
    finally:
        lightning_synflow.lightning.fit_pruning.prune_masks = record.prune_masks


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir, cases = sys.argv[1:3]
    for case in cases.split(","):
        mode_, name, kind_ = case.split(":")
        run(out_dir, mode_, kind_, name)
