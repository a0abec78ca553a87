"""N:M granularity: exact patterns for every scorer, the schedule reaching the pattern, and what is refused."""

import warnings

import pytest
import torch
from torch import nn

from lightning_helpers import MLP, random_data
from lightning_synflow import NM, PruneAtInit, available_scorers, compute_masks, get_granularity, num_kept
from lightning_synflow.selection.granularity import resolve_pattern_density, select_pattern
from lightning_synflow.scorers.base import Scorer
from lightning_synflow.selection.semi_structured import semi_structured_plan, to_semi_structured


class PatternNet(nn.Module):
    """Rows of 16, 72 and 32 weights (grouped by 4), 27 (the first conv: left dense) and a 1:4-ready head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


X = torch.randn(4, 3, 6, 6)
DATA = [(torch.randn(4, 3, 6, 6), torch.randint(4, (4,)))]
GROUPED = ["conv2.weight", "fc1.weight", "fc2.weight"]


def prune(scorer, pattern="2:4", **kwargs):
    torch.manual_seed(0)
    model = PatternNet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = compute_masks(model, scorer, granularity=pattern, example_input=X, dataloader=DATA, **kwargs)
    return model, masks, [str(w.message) for w in caught]


def test_granularity_names():
    assert get_granularity("weight") is None
    assert str(get_granularity("channel")) == "channel"
    assert get_granularity("2:4") == NM(2, 4) and get_granularity(" 1 : 8 ") == NM(1, 8)
    for bad in ("4:2", "0:4", "2:2", "2-4", "", 3):
        with pytest.raises(ValueError, match=r"`granularity` must be 'weight', 'channel' or 'N:M' with 0 < N < M .* got " + repr(bad).replace("(", r"\(")):
            get_granularity(bad)


def test_the_pattern_implies_the_sparsity():
    assert resolve_pattern_density(NM(2, 4), None, None) == 0.5
    assert resolve_pattern_density(NM(1, 4), 0.75, None) == 0.25
    assert resolve_pattern_density(NM(1, 4), None, 4.0) == 0.25
    with pytest.raises(ValueError, match=r"granularity '2:4' keeps 2 of every 4 weights \(sparsity 0.5\): leave `sparsity` and"
                                         r" `compression` out, or give sparsity=0.5; got sparsity=0.9"):
        resolve_pattern_density(NM(2, 4), 0.9, None)


def reference(scores, k, pattern, candidates):
    """Independently: the n best candidates of each group (stable by index), then the best of the rest over all
    tensors, ties to the earlier tensor and lower index."""
    names = list(scores)
    items = []  # (score, tensor, flat index)
    chosen = {n: torch.zeros(scores[n].numel(), dtype=torch.bool) for n in names}
    for t, n in enumerate(names):
        flat, alive = scores[n].reshape(-1), candidates[n].reshape(-1)
        for g in range(flat.numel() // pattern.m):
            members = [i for i in range(g * pattern.m, (g + 1) * pattern.m) if alive[i]]
            members.sort(key=lambda i: (-float(flat[i]), i))
            for i in members[: pattern.n]:
                chosen[n][i] = True
        items += [(float(flat[i]), t, i) for i in range(flat.numel()) if alive[i] and not chosen[n][i]]
    floor = sum(int(c.sum()) for c in chosen.values())
    items.sort(key=lambda x: (-x[0], x[1], x[2]))
    for _, t, i in items[: k - floor]:
        chosen[names[t]][i] = True
    return {n: chosen[n].view(scores[n].shape) for n in names}


@pytest.mark.parametrize("pattern", [NM(2, 4), NM(1, 4), NM(3, 8)])
@pytest.mark.parametrize("ties", [False, True])
def test_selection_keeps_the_best_of_every_group_then_the_best_left(pattern, ties):
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(6, 16, generator=g), "b": torch.rand(4, 24, generator=g)}
    if ties:
        scores = {n: (s * 3).floor() for n, s in scores.items()}
    candidates = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    for n, c in candidates.items():  # some weights already pruned, never below n per group
        c.view(-1, pattern.m)[:, pattern.m - 1] = pattern.m - 1 < pattern.n
    total = sum(int(c.sum()) for c in candidates.values())
    floor = sum(s.numel() for s in scores.values()) * pattern.n // pattern.m
    for k in (floor, (floor + total) // 2, total):
        got = select_pattern(scores, k, pattern, candidates)
        expected = reference(scores, k, pattern, candidates)
        assert all(torch.equal(got[n], expected[n]) for n in scores)
        assert sum(int(m.sum()) for m in got.values()) == k


def test_a_budget_below_the_groups_floor_is_refused():
    scores = {"a": torch.rand(2, 8)}
    with pytest.raises(ValueError, match=r"cannot keep 7 weights of \['a'\] with 2:4: its groups alone keep 8"):
        select_pattern(scores, 7, NM(2, 4))


PATTERN_SCORERS = sorted(set(available_scorers()) - {"erk"})


@pytest.mark.parametrize("scorer", PATTERN_SCORERS)
def test_every_scorer_ends_on_the_exact_pattern(scorer):
    _, masks, messages = prune(scorer)
    for name in GROUPED:
        groups = masks[name].reshape(-1, 4).sum(1)  # along the stored row: in_channels * kh * kw for conv2
        assert (groups == 2).all(), name
    assert masks["conv1.weight"].all()  # rows of 27: left dense
    assert any("['conv1.weight'] left dense, their rows (all dimensions but the first) not being a multiple of 4" in m
               for m in messages)


def test_erk_densities_cannot_end_on_a_pattern():
    with pytest.raises(ValueError, match=r"granularity '2:4' keeps 2 of every 4 weights of each tensor it groups, which"
                                         r" distribution ERK\(power_scale=1.0\) does not at density 0.5; use 'global' or 'uniform'"):
        prune("erk")
    with pytest.raises(ValueError, match=r"granularity '2:4' is not supported with shuffle=True"):
        prune("magnitude", shuffle=True)


class Recording(Scorer):
    """Magnitude scores, recording the masks each round starts from."""

    def __init__(self):
        self.seen = []

    def score(self, model, masks, context):
        self.seen.append({n: m.clone() for n, m in masks.items()})
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs() * m for n, m in masks.items()}


def test_an_iterative_schedule_prunes_freely_but_never_below_the_pattern_and_ends_on_it():
    scorer = Recording()
    _, masks, _ = prune(scorer, "1:4", iterations=6)
    rounds = scorer.seen[1:] + [masks]
    total = sum(masks[n].numel() for n in GROUPED)
    for t, seen in enumerate(rounds, start=1):
        kept = sum(int(seen[n].sum()) for n in GROUPED)
        assert kept == num_kept(0.25 ** (t / 6), total)  # the global schedule over the grouped tensors
        assert all((seen[n].reshape(-1, 4).sum(1) >= 1).all() for n in GROUPED)
    assert any((rounds[2][n].reshape(-1, 4).sum(1) > 1).any() for n in GROUPED)  # not the pattern yet
    assert all((masks[n].reshape(-1, 4).sum(1) == 1).all() for n in GROUPED)


def test_uniform_distribution_ends_on_the_pattern_too():
    _, masks, _ = prune("synflow", iterations=5, distribution="uniform")
    assert all((masks[n].reshape(-1, 4).sum(1) == 2).all() for n in GROUPED)


def test_no_tensor_to_group_is_an_error():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"granularity '2:4' fits none of the prunable tensors \['0.weight', '2.weight'\]"):
        compute_masks(model, "magnitude", granularity="2:4")


def test_prune_at_init_trains_on_the_pattern():
    from lightning.pytorch import Trainer

    model = MLP()
    pruner = PruneAtInit(scorer="snip", granularity="2:4", verbose=False)
    trainer = Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[pruner])
    trainer.fit(model, random_data())
    params = dict(model.named_parameters())
    for name, mask in pruner.masks.items():
        assert (mask.reshape(-1, 4).sum(1) == 2).all()
        assert (params[name].detach()[~mask] == 0).all()
    assert pruner.state_dict()["granularity"] == "2:4"
    with pytest.raises(ValueError, match=r"granularity '2:4' keeps 2 of every 4 weights"):
        PruneAtInit(granularity="2:4", sparsity=0.9)


def test_semi_structured_plan_says_which_linear_layers_qualify_and_why_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 10), nn.Linear(64, 64), nn.Conv2d(4, 4, 1)).half()
    with torch.no_grad():  # layers 0 and 1 pruned 2:4, layer 2 dense
        for name in ("0", "1"):
            layer = model.get_submodule(name)
            layer.weight.mul_(compute_masks(layer, "magnitude", granularity="2:4")["weight"])
    plan = semi_structured_plan(model)
    assert plan.eligible == ["0"]
    assert plan.skipped["1"].startswith("shape (10, 64): both dimensions must be multiples of")
    assert plan.skipped["2"] == "not 2:4: 1024 group(s) of 4 keep more than 2 non-zeros"
    assert semi_structured_plan(model.float()).skipped["0"].startswith("dtype torch.float32 (allowed:")


def test_to_semi_structured_needs_a_recent_gpu_and_changes_nothing_without_one():
    layer = nn.Linear(64, 64).half()
    with torch.no_grad():
        layer.weight.mul_(compute_masks(layer, "magnitude", granularity="2:4")["weight"])
    before = layer.weight
    with pytest.raises(RuntimeError, match=r"to_semi_structured needs the Linear layers on a CUDA device of compute"
                                           r" capability 8.0 or higher \(semi-structured kernels\), but '' is on cpu"):
        to_semi_structured(layer)
    assert layer.weight is before
