"""Pruning a sharded model over gloo processes, in every layout ModelParallelStrategy makes, equals pruning it
in one process.

The processes run tests/scripts/sharded_prune.py (process groups are never started inside pytest), two
launches in all: the 2-process layouts (FSDP2, tensor parallel, Lightning's default 1 x 2 mesh with a replica
on each rank) and the 4-process ones (HSDP, FSDP2 over tensor parallelism). This file prunes the same initial
model in one process, on the union of the batches the ranks scored, and compares.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import sharded_prune  # noqa: E402

from lightning_synflow import compute_masks, compute_scores  # noqa: E402
from test_pipeline_compat import _digest  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "sharded_prune.py"
#: Digests of the sharded masks of every case, taken before the redesign of issue 25 (see the end of this file).
REFERENCE = Path(__file__).parent / "data" / "masks_sharded.json"


def launch_all(out):
    """Every layout's ranks, one launch per world size, their results written under ``out``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for world in sorted(set(sharded_prune.MODES.values())):
        modes = ",".join(m for m, w in sharded_prune.MODES.items() if w == world)
        proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(world), modes], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load_ranks(out, mode):
    return [torch.load(out / f"{mode}-rank{r}.pt", weights_only=False) for r in range(sharded_prune.MODES[mode])]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    return launch_all(tmp_path_factory.mktemp("sharded_prune"))


@pytest.fixture(scope="module", params=list(sharded_prune.MODES))
def run(request, launched):
    return request.param, load_ranks(launched, request.param)


def one_process_batches(mode, ranks):
    return [b for r in sharded_prune.data_ranks(mode) for b in ranks[r]["batches"]]


def test_parameters_are_laid_out_as_the_layout_says(run):
    mode, ranks = run
    placements = {n: p for n, (_, p) in ranks[0]["params"].items() if n.endswith("weight")}
    meshes = {n: m for n, m in ranks[0]["meshes"].items() if n.endswith("weight")}
    rows, cols = "(Shard(dim=0),)", "(Shard(dim=1),)"
    if mode == "fsdp":
        assert set(placements.values()) == {rows}
    elif mode == "tp":
        assert placements == {"0.weight": rows, "2.weight": cols, "4.weight": rows, "6.weight": cols}
    elif mode == "replicas":  # a whole replica on each rank's one-rank mesh, and the last layer sharded over both
        assert set(placements.values()) == {rows}
        assert meshes == {"0.weight": [0], "1.weight": [0], "3.weight": [0], "6.weight": [0, 1]}
        assert ranks[1]["meshes"]["0.weight"] == [1]
    elif mode == "hsdp":
        assert set(placements.values()) == {"(Replicate(), Shard(dim=0))"}
        assert set(map(str, meshes.values())) == {"[[0, 1], [2, 3]]"}
    else:
        strided, row_parallel = "(_StridedShard(dim=0, sf=2), Shard(dim=0))", "(Shard(dim=0), Shard(dim=1))"
        assert placements == {"0.weight": strided, "2.weight": row_parallel, "4.weight": strided, "6.weight": row_parallel}


@pytest.mark.parametrize("case", list(sharded_prune.CASES))
def test_masks_equal_one_process_and_are_laid_out_as_the_parameters(run, case):
    mode, ranks = run
    args = sharded_prune.CASES[case]
    model = sharded_prune.build(mode)
    model.load_state_dict(ranks[0]["init"])
    batches = one_process_batches(mode, ranks)
    kwargs = {k: v for k, v in args.items() if k != "scorer"}
    expected = compute_masks(model, sharded_prune.scorer_of(args, mode), sparsity=sharded_prune.SPARSITY,
                             example_input=ranks[0]["example"], dataloader=batches, num_batches=len(batches), **kwargs)
    for rank in ranks:
        got = rank["masks"][case]
        assert list(got) == list(expected)
        for name in expected:
            assert torch.equal(got[name], expected[name]), (case, name)
        assert rank["layouts"][case] == {n: rank["params"][n] for n in expected}
    total = sum(m.numel() for m in expected.values())
    if kwargs.get("distribution", "global") == "global":
        assert sum(int(m.sum()) for m in ranks[0]["masks"][case].values()) == round((1 - sharded_prune.SPARSITY) * total)


def test_scoring_leaves_weights_and_buffers_as_they_were(run):
    _, ranks = run
    for rank in ranks:
        for name, value in rank["init"].items():
            assert torch.equal(rank["state_after"][name], value), name


def test_what_a_sharded_model_cannot_be_pruned_with_is_refused_before_any_weight_is_touched(run):
    mode, ranks = run
    for index, rank in enumerate(ranks):
        errors = rank["errors"]
        message, untouched = errors["grasp"]
        assert message.startswith("scorer GraSP(temperature=200.0, mode='train') cannot score a sharded model (DTensor"
                                  " parameters); scorers that can: ['erk', 'force', 'iter_snip', 'magnitude',")
        assert untouched
        message, untouched = errors["shuffle"]
        assert message == ("`shuffle` moves kept positions within whole tensors, which a sharded model never holds;"
                           " got shuffle=True")
        assert untouched
        if mode in ("fsdp", "tp"):
            message, untouched = errors["partial"]
            assert message.startswith("parameter '0.weight' has placement(s) [Partial(sum)] on mesh")
            assert "pruning supports DTensors placed Shard(dim), _StridedShard(dim)" in message
            assert untouched
        if mode == "fsdp":  # bfloat16 compute of float32 weights: refused, whatever runs the model
            for scorer in ("synflow", "snip"):
                message, untouched = errors[f"mixed-{scorer}"]
                assert message == (
                    "fully_shard on the root module has mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16,"
                    " reduce_dtype=torch.float32, output_dtype=None, cast_forward_inputs=True), which casts to"
                    " ['torch.bfloat16'] though the parameters are ['torch.float32']: scores would be of the cast weights and"
                    " gradients, not those one process computes; prune before applying mp_policy (fully_shard without"
                    " it), or with the parameters themselves in the dtype it computes in"), scorer
                assert untouched
        if mode == "replicas":  # one rank holds the whole weight, the other its second half
            message, untouched = errors["overlap"]
            assert message.startswith("parameter '6.weight' (")
            assert message.endswith("is held in pieces that overlap over the 2 ranks, so no rank can count its weights"
                                    " once; exclude it (exclude_names=['6.weight'])")
            assert untouched
        if mode == "2d":  # tensor parallel alone: the data-parallel ranks' gradients are never summed
            message, untouched = errors["unreduced"]
            assert message == ("the gradients of ['0.weight', '2.weight', '4.weight', '6.weight'] are not reduced over"
                               " the ranks (no fully_shard holds them), but the ranks score 2 different sets of batches:"
                               " score the same batches on every rank, or fully_shard them")
            assert untouched
        if mode in ("replicas", "2d"):  # peers that FSDP2 does not sum over scored different batches
            message, untouched = errors["batches"]
            summed = [index] if mode == "replicas" else [index % 2, index % 2 + 2]  # the data-parallel ranks
            assert message.startswith(f"FSDP2 sums the gradients of ['0.weight', '0.bias'] over ranks {summed}, which"
                                      f" score {len(summed)} of the {len(ranks)} different sets of batches")
            assert "scoring would not be one process's over their union" in message
            assert untouched


@pytest.mark.parametrize("scorer", sharded_prune.SCORES)
def test_scores_are_laid_out_as_the_parameters_and_equal_one_process(run, scorer):
    mode, ranks = run
    model = sharded_prune.build(mode)
    model.load_state_dict(ranks[0]["init"])
    batches = one_process_batches(mode, ranks)
    expected = compute_scores(model, sharded_prune.scorer_of({"scorer": scorer}, mode), example_input=ranks[0]["example"],
                              dataloader=batches, num_batches=len(batches))
    for rank in ranks:
        got = rank["scores"][scorer]
        assert list(got) == list(expected)
        for name in expected:
            if sharded_prune.convolutional(mode):  # each layer computed whole on every rank, sums of two: bit for bit
                assert torch.equal(got[name], expected[name]), name
            else:  # partial sums across ranks, gradients of 4 ranks summed in another order: equal to rounding
                torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=0)
        assert rank["score_layouts"][scorer] == {n: rank["params"][n] for n in expected}


def test_plain_layers_beside_tensor_parallel_ones_score_as_one_process(launched):
    ranks = [torch.load(launched / f"tp-rank{r}.pt", weights_only=False) for r in range(2)]
    model = sharded_prune.build("tp")
    model.load_state_dict(ranks[0]["init"])
    expected = compute_masks(model, sharded_prune.scorer_of({"scorer": "snip"}, "tp"), sparsity=sharded_prune.SPARSITY,
                             example_input=ranks[0]["example"], dataloader=ranks[0]["batches"])
    for rank in ranks:
        assert list(rank["plain"]) == list(expected)
        for name in expected:
            assert torch.equal(rank["plain"][name], expected[name]), name


def test_distributed_checkpoint_masks_resume_under_another_layout(launched):
    ranks = [torch.load(launched / f"tp-rank{r}.pt", weights_only=False)["relayout"] for r in range(2)]
    rows, cols = "(Shard(dim=0),)", "(Shard(dim=1),)"
    for rank in ranks:
        saved = {n: m for n, (m, _) in rank["saved"].items()}
        assert {n: p for n, (_, p) in rank["saved"].items()} == {"0.weight": rows, "2.weight": cols, "2.bias": "(Replicate(),)",
                                                                 "6.weight": cols}
        assert {n: p for n, (_, p) in rank["fsdp"].items()} == dict.fromkeys(sharded_prune.RELAYOUT_NAMES, rows)
        assert {n: p for n, (_, p) in rank["tp"].items()} == {n: p for n, (_, p) in rank["saved"].items()}
        for layout in ("fsdp", "tp"):
            for name, (mask, _) in rank[layout].items():
                assert torch.equal(mask, saved[name]), (layout, name)
        assert all(torch.equal(m, ranks[0]["saved"][n][0]) for n, m in saved.items())


def test_a_strided_piece_that_is_no_one_block_prunes_and_checkpoints_as_one_process(launched):
    ranks = [torch.load(launched / f"fsdp-rank{r}.pt", weights_only=False)["strided"] for r in range(2)]
    assert [r["local_rows"] for r in ranks] == [6, 4]
    init = torch.load(launched / "fsdp-rank0.pt", weights_only=False)["init"]
    for scorer in sharded_prune.STRIDED_SCORERS:
        model = sharded_prune.build("fsdp")
        model.load_state_dict(init)
        expected = compute_masks(model, sharded_prune.scorer_of({"scorer": scorer}, "fsdp"),
                                 sparsity=sharded_prune.SPARSITY, parameters=sharded_prune.STRIDED_NAMES)
        for rank in ranks:
            for name in expected:
                assert torch.equal(rank["masks"][scorer][name], expected[name]), (scorer, name)
            assert rank["checkpoint_round_trip"][scorer]


def _digests(mode, ranks):
    return {f"{mode}-{case}": _digest(masks) for case, masks in ranks[0]["masks"].items()}


def test_masks_as_before_the_redesign(run):
    mode, ranks = run
    expected = {k: v for k, v in json.loads(REFERENCE.read_text()).items() if k.startswith(f"{mode}-")}
    assert expected and _digests(mode, ranks) == expected


if __name__ == "__main__":  # python tests/test_sharded.py > tests/data/masks_sharded.json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = launch_all(Path(tmp))
        digests = {k: v for mode in sharded_prune.MODES for k, v in _digests(mode, load_ranks(out, mode)).items()}
    print(json.dumps(digests, indent=1, sort_keys=True))
