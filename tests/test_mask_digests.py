"""Every scorer x distribution x structured granularity (whole channels, N:M) gives the masks it gave before
the redesign of issue 25: digests of today's masks (``tests/data/masks_granularity.json``, written by running
this file as a script) against the masks of the code under test. A combination refused today is pinned as
its error message, so that the set of supported options is proved unchanged too. Unstructured masks are
pinned by tests/test_pipeline_compat.py, sharded ones by tests/test_sharded.py."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_synflow import available_scorers, compute_masks

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyCNN  # noqa: E402
from test_pipeline_compat import _digest  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "masks_granularity.json"
#: The distributions each granularity is pruned with; N:M needs every grouped tensor at N/M in the end, which
#: "erk" refuses (pinned once, below).
DISTRIBUTIONS = {"channel": ("global", "uniform", "erk"), "2:4": ("global", "uniform")}
#: Scorers that are random pruning in a distribution of their own, which they refuse to be given.
OWN_DISTRIBUTION = ("erk", "uniform")
#: The package's own scorers, read when this file is collected: other tests register scorers of their own.
BUILT_IN_SCORERS = tuple(available_scorers())


def _cases() -> dict[str, dict]:
    cases = {}
    for granularity, distributions in DISTRIBUTIONS.items():
        for scorer in BUILT_IN_SCORERS:
            for distribution in (None,) if scorer in OWN_DISTRIBUTION else distributions:
                cases[f"{granularity}-{scorer}-{distribution or 'own'}-T3"] = dict(
                    granularity=granularity, scorer=scorer, distribution=distribution, iterations=3
                )
    cases["2:4-synflow-erk-T3"] = dict(granularity="2:4", scorer="synflow", distribution="erk", iterations=3)
    for granularity in ("channel", "2:4"):
        cases[f"{granularity}-synflow-global-T1"] = dict(granularity=granularity, scorer="synflow", iterations=1)
        cases[f"{granularity}-synflow-linear-T4"] = dict(granularity=granularity, scorer="synflow", iterations=4,
                                                          schedule="linear")
        cases[f"{granularity}-synflow-invert-T3"] = dict(granularity=granularity, scorer="synflow", iterations=3, invert=True)
        cases[f"{granularity}-snip-invert-T1"] = dict(granularity=granularity, scorer="snip", invert=True)
        cases[f"{granularity}-magnitude-mapping"] = dict(granularity=granularity, scorer="magnitude",
                                                         distribution={"conv2.*": 0.5}, iterations=2)
        cases[f"{granularity}-magnitude-shuffle"] = dict(granularity=granularity, scorer="magnitude", shuffle=True)
    cases["1:4-synflow-global-T3"] = dict(granularity="1:4", scorer="synflow", iterations=3)
    cases["1:4-magnitude-uniform-T1"] = dict(granularity="1:4", scorer="magnitude", distribution="uniform")
    cases["channel-magnitude-global-half"] = dict(granularity="channel", scorer="magnitude", sparsity=0.5)
    return cases


def _masks(case: dict) -> dict[str, torch.Tensor] | str:
    """The case's masks on TinyCNN, or ``"refused: <message>"``."""
    torch.manual_seed(0)
    model = TinyCNN()
    x = torch.randn(8, 3, 8, 8)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(5)]
    args = dict(case)
    if args["granularity"] == "channel":
        args.setdefault("sparsity", 0.75)
    torch.manual_seed(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # N:M names the tensors it leaves dense
            return compute_masks(model, example_input=x, dataloader=batches, **args)
    except ValueError as err:
        return f"refused: {err}"


def _pinned(case: dict) -> str:
    masks = _masks(case)
    return masks if isinstance(masks, str) else _digest(masks)


@pytest.fixture(scope="module")
def reference() -> dict[str, str]:
    return json.loads(REFERENCE.read_text())


def test_every_case_is_pinned_and_the_refused_ones_are_those_refused_today(reference):
    assert sorted(reference) == sorted(_cases())
    refused = sorted(k for k, v in reference.items() if v.startswith("refused: "))
    assert refused == ["2:4-erk-own-T3", "2:4-magnitude-shuffle", "2:4-synflow-erk-T3", "channel-magnitude-shuffle"]


@pytest.mark.parametrize("case", sorted(_cases()))
def test_masks_as_before_the_redesign(case, reference):
    assert _pinned(_cases()[case]) == reference[case]


if __name__ == "__main__":  # python tests/test_mask_digests.py > tests/data/masks_granularity.json
    print(json.dumps({name: _pinned(case) for name, case in sorted(_cases().items())}, indent=1))
