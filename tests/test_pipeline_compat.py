"""Every option that existed before layer budgets became their own axis (``distribution=``) gives the masks
it gave then: digests of masks computed by the earlier pipeline (``tests/data/masks_before_distributions.json``,
written by running this file as a script on that code) against the masks of today's."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_synflow import ERKRandom, Random, UniformRandom, compute_masks

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyCNN  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "masks_before_distributions.json"
SCORERS = ["synflow", "magnitude", "random", "snip", "grasp", "grasp_abs", "iter_snip", "force", "snip_it", "ntksap", "erk", "uniform"]


def _cases() -> dict[str, dict]:
    cases = {}
    for scorer in SCORERS:
        for scope in ("global", "layerwise"):
            for iterations in (1, 4):
                cases[f"{scorer}-{scope}-T{iterations}"] = dict(scorer=scorer, scope=scope, iterations=iterations)
    cases["synflow-linear"] = dict(scorer="synflow", iterations=5, schedule="linear")
    cases["synflow-invert"] = dict(scorer="synflow", iterations=3, invert=True)
    cases["magnitude-shuffle"] = dict(scorer="magnitude", shuffle=True)
    cases["magnitude-layerwise-invert"] = dict(scorer="magnitude", scope="layerwise", invert=True)
    cases["erk-seeded-T3"] = dict(scorer=("erk", {"seed": 3}), iterations=3)
    cases["erk-power-half"] = dict(scorer=("erk", {"seed": 0, "power_scale": 0.5}))
    cases["uniform-seeded-T3"] = dict(scorer=("uniform", {"seed": 3}), iterations=3)
    cases["random-seeded-layerwise"] = dict(scorer=("random", {"seed": 1}), scope="layerwise")
    cases["synflow-continued"] = dict(scorer="synflow", iterations=3, start=("magnitude", 0.5, "global"))
    cases["synflow-layerwise-continued"] = dict(scorer="synflow", iterations=3, scope="layerwise", start=("magnitude", 0.5, "layerwise"))
    cases["erk-continued"] = dict(scorer="erk", iterations=2, start=("magnitude", 0.4, "layerwise"))
    return cases


def _scorer(spec):
    if isinstance(spec, tuple):
        name, kwargs = spec
        return {"erk": ERKRandom, "uniform": UniformRandom, "random": Random}[name](**kwargs)
    return spec


def _masks(case: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyCNN()
    x = torch.randn(8, 3, 8, 8)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(5)]
    args = dict(case)
    start = args.pop("start", None)
    masks = None
    if start is not None:
        name, density, scope = start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            masks = compute_masks(model, name, sparsity=1 - density, scope=scope)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return compute_masks(
            model, _scorer(args.pop("scorer")), sparsity=0.9, example_input=x, dataloader=batches, masks=masks, **args
        )


def _digest(masks: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, mask in masks.items():
        h.update(name.encode())
        h.update(mask.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(_cases()))
def test_masks_as_before(case):
    expected = json.loads(REFERENCE.read_text())[case]
    assert _digest(_masks(_cases()[case])) == expected


if __name__ == "__main__":  # python tests/test_pipeline_compat.py > tests/data/masks_before_distributions.json
    print(json.dumps({name: _digest(_masks(case)) for name, case in sorted(_cases().items())}, indent=1))
