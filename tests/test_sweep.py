"""The accuracy-vs-compression study tools: the IDX reader and the Fashion-MNIST / Tiny ImageNet data modules
on tiny files the tests write, the sweep runner (``examples/sweep.py``) on a shrunken LeNet-5 for a few steps
(rows, resume, columns), its extension rule, the Fig. 6-style plot, and the paper configs.

Everything runs in this process on tiny data; the real study is not part of the test suite.
"""

from __future__ import annotations

import csv
import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PAPER = EXAMPLES / "configs" / "paper"
FASHION = PAPER / "fashion_mnist_lenet5.yaml"


@pytest.fixture(scope="module", autouse=True)
def examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def idx_bytes(values: np.ndarray, code: int) -> bytes:
    """An IDX file written by hand: magic (0, 0, type code, ndim), big-endian dims, big-endian values."""
    big = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    return bytes([0, 0, code, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape) + values.astype(big).tobytes()


def write_fashion(folder: Path, n_train: int = 300, n_test: int = 100, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in data.items():
        payload = idx_bytes(values, 0x08)
        (folder / (name + ".gz")).write_bytes(gzip.compress(payload)) if gz else (folder / name).write_bytes(payload)
    return data


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fashion")
    write_fashion(folder)
    return folder


# ---------------------------------------------------------------------------------------------- IDX


def test_read_idx_gzipped_and_plain(tmp_path):
    from datamodules import read_idx

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    (tmp_path / "b").write_bytes(idx_bytes(images, 0x08))
    for name in ("a.gz", "b"):
        out = read_idx(tmp_path / name)
        assert out.dtype == torch.uint8 and out.shape == (2, 3, 4)
        assert torch.equal(out, torch.from_numpy(images))
    # Multi-byte types are big-endian in the file and native in the tensor.
    ints = np.array([[1, -2, 70000]], dtype=np.int32)
    (tmp_path / "c").write_bytes(idx_bytes(ints, 0x0C))
    assert read_idx(tmp_path / "c").tolist() == [[1, -2, 70000]]
    floats = np.array([0.5, -3.25], dtype=np.float32)
    (tmp_path / "d").write_bytes(gzip.compress(idx_bytes(floats, 0x0D)))
    assert read_idx(tmp_path / "d").tolist() == [0.5, -3.25]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),  # second magic byte not zero
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x05", "not an IDX file"),  # unknown type code
        (b"", r"nothing \(empty\)"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "header truncated"),
        (idx_bytes(np.zeros((2, 2), np.uint8), 0x08)[:-1], "3 bytes follow it"),  # payload one byte short
        (gzip.compress(idx_bytes(np.zeros(4, np.uint8), 0x08))[:-6], "gzipped"),  # corrupt gzip stream
    ],
    ids=["magic", "type", "empty", "header", "payload", "gzip"],
)
def test_read_idx_rejects_bad_files_naming_them(tmp_path, content, message):
    from datamodules import read_idx

    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------- data modules


def test_fashion_mnist_datamodule_reads_idx(fashion_dir, tmp_path):
    from datamodules import FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNISTDataModule

    raw = write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)  # torchvision's layout, unzipped
    for folder in (fashion_dir, tmp_path):
        dm = FashionMNISTDataModule(data_dir=str(folder), batch_size=32, val_size=50, train_size=200, seed=3)
        dm.setup("fit")
        assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (200, 50, 100)
        x, y = next(iter(dm.train_dataloader()))
        assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    test_x, test_y = dm.test_set.tensors
    expected = (torch.from_numpy(raw["t10k-images-idx3-ubyte"]).float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    assert torch.allclose(test_x[:, 0], expected) and test_y.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()
    # The split is seeded: the same seed gives the same held-out images, disjoint from the training ones.
    again = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=50, train_size=200, seed=3)
    again.setup("fit")
    assert torch.equal(again.val_set.tensors[0], dm.val_set.tensors[0])
    train_rows = {tuple(r) for r in dm.train_set.tensors[0].flatten(1)[:, :16].tolist()}
    assert not train_rows & {tuple(r) for r in dm.val_set.tensors[0].flatten(1)[:, :16].tolist()}
    # val_size 0 validates on the test set (the papers' protocol).
    plain = FashionMNISTDataModule(data_dir=str(fashion_dir))
    plain.setup("fit")
    assert plain.val_set is plain.test_set and len(plain.train_set) == 300


def test_fashion_mnist_missing_files_error(tmp_path):
    from datamodules import FashionMNISTDataModule

    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\].*dataset-fashion-mnist.*download=true"):
        FashionMNISTDataModule(data_dir=str(tmp_path)).setup("fit")


@pytest.mark.parametrize("layout", ["official", "imagefolder"])
def test_tiny_imagenet_datamodule_val_layouts(tmp_path, layout):
    from PIL import Image

    from datamodules import TinyImageNetDataModule

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    for i, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (64, 64), (60 * i, 30 * j, 0)).save(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG")
    lines = []
    for k, wnid in enumerate(reversed(wnids)):
        folder = root / "val" / ("images" if layout == "official" else f"{wnid}/images")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(folder / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    if layout == "official":
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    dm = TinyImageNetDataModule(data_dir=str(root), batch_size=2, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.test_set) == 2
    # Labels follow the wnid of each file (val_0 is the second wnid), with train/'s class indices.
    assert sorted((Path(path).name, label) for path, label in dm.test_set.samples) == [("val_0.JPEG", 1), ("val_1.JPEG", 0)]
    assert isinstance(dm.test_set[0][1], int) and dm.test_set[0][0].shape == (3, 64, 64)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200.zip"):
        TinyImageNetDataModule(data_dir=str(tmp_path / "nowhere")).setup("fit")


def test_cifar100_datamodule_missing_data_error(tmp_path):
    from datamodules import CIFAR100DataModule

    with pytest.raises(RuntimeError, match=r"CIFAR-100 was not found.*download=true.*cifar-100-python"):
        CIFAR100DataModule(data_dir=str(tmp_path)).setup("fit")


# ---------------------------------------------------------------------------------------------- sweep


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_rows_and_resumes(fashion_dir, tmp_path, capsys):
    import sweep

    from lightning_synflow import num_kept

    out = tmp_path / "sweep.csv"
    args = [
        "--config", str(FASHION), "--out", str(out), "--methods", "synflow", "random", "--compressions", "1", "2",
        "--seeds", "0", "--jobs", "1",
        "--set", f"data.init_args.data_dir={fashion_dir}", "--set", "model.backbone.init_args.hidden=[32, 16]",
        "--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2", "--set", "trainer.log_every_n_steps=1",
        "--set", "data.init_args.batch_size=64",
    ]  # fmt: skip
    assert sweep.main(args) == 0
    with out.open(newline="") as f:
        assert next(csv.reader(f)) == sweep.COLUMNS
    rows = read(out)
    assert [(r["method"], float(r["log10_compression"])) for r in rows] == [
        ("dense", 0.0), ("synflow", 1.0), ("synflow", 2.0), ("random", 1.0), ("random", 2.0)
    ]  # fmt: skip
    total = int(rows[0]["total"])
    assert total == 150 + 2400 + 400 * 32 + 32 * 16 + 16 * 10  # the shrunken LeNet-5's Conv2d and Linear weights
    for r in rows:
        assert (r["dataset"], r["model"], r["seed"], r["epochs"]) == ("fashion-mnist", "lenet5", "0", "1")
        assert 0.0 <= float(r["test_acc_final"]) <= 1.0 and 0.0 <= float(r["test_acc_best"]) <= 1.0
        assert r["best_epoch"] == "1" and float(r["cpu_s"]) > 0 and r["protocol"] == rows[0]["protocol"]
        assert r["config"] == "examples/configs/paper/fashion_mnist_lenet5.yaml" and r["device"] == "cpu"
        if r["method"] == "dense":
            assert int(r["kept"]) == total and r["prune_s"] == "" and r["effective_kept"] == ""
            continue
        assert int(r["kept"]) == num_kept(10 ** -float(r["log10_compression"]), total)
        assert float(r["measured_sparsity"]) == pytest.approx(1 - int(r["kept"]) / total, abs=1e-6)  # still sparse after training
        assert float(r["prune_s"]) >= 0 and r["collapsed_tensors"] != ""
        assert 0 <= int(r["effective_kept"]) <= int(r["kept"])
        assert float(r["effective_sparsity"]) == pytest.approx(1 - int(r["effective_kept"]) / total, rel=1e-5)
    by_key = {(r["method"], r["log10_compression"]): r for r in rows}
    assert float(by_key[("synflow", "2.0")]["effective_kept"]) > float(by_key[("random", "2.0")]["effective_kept"])

    # Resume: the same command has nothing left to do; a new seed runs only what is missing.
    capsys.readouterr()
    assert sweep.main(args) == 0
    assert "5 already in" in capsys.readouterr().out and read(out) == rows
    assert sweep.main([*args[: args.index("--methods")], "--methods", "random", "--compressions", "1", "--seeds", "0", "1",
                       "--no-dense", *args[args.index("--jobs"):]]) == 0  # fmt: skip
    new = read(out)[len(rows):]
    assert [(r["method"], r["log10_compression"], r["seed"]) for r in new] == [("random", "1.0", "1")]
    # Another protocol (here: more epochs) is a fresh set of runs, listed by --dry-run without training.
    capsys.readouterr()
    assert sweep.main([*args, "--epochs", "2", "--dry-run"]) == 0
    assert "0 already in" in capsys.readouterr().out and len(read(out)) == 6


def test_sweep_isometry_axis_columns_and_migration(fashion_dir, tmp_path):
    """Runs without and with approximate-isometry steps: the penalty falls, the spectrum after pruning is that
    of the initial weights masked (the same with or without the steps that follow), and a CSV of the earlier
    columns is rewritten with them, its rows keyed as runs without isometry steps."""
    import sweep

    out = tmp_path / "sweep.csv"
    args = [
        "--config", str(FASHION), "--out", str(out), "--methods", "random", "--compressions", "1.5", "--seeds", "0",
        "--jobs", "1", "--no-dense", "--isometry-steps", "0", "20",
        "--set", f"data.init_args.data_dir={fashion_dir}", "--set", "model.backbone.init_args.hidden=[32, 16]",
        "--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2", "--set", "data.init_args.batch_size=64",
    ]  # fmt: skip
    assert sweep.main(args) == 0
    plain, ai = read(out)
    assert (plain["isometry_steps"], ai["isometry_steps"]) == ("0", "20")
    assert plain["penalty_before"] == plain["isometry_s"] == plain["jsv_isometry_mean"] == ""
    assert float(ai["penalty_after"]) < float(ai["penalty_before"]) and float(ai["isometry_s"]) > 0
    stats = ("mean", "min", "max", "below_1e-3")
    assert all(plain[f"jsv_pruned_{s}"] == ai[f"jsv_pruned_{s}"] != "" for s in stats)  # same init, same masks
    assert ai["jsv_isometry_mean"] != ai["jsv_pruned_mean"]
    assert 0 <= float(ai["jsv_pruned_min"]) <= float(ai["jsv_pruned_mean"]) <= float(ai["jsv_pruned_max"])
    assert 0 <= float(ai["jsv_pruned_below_1e-3"]) <= 1

    old_columns = [c for c in sweep.COLUMNS if c != "isometry_steps" and not c.startswith(("isometry_s", "penalty_", "jsv_"))]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns)
        writer.writeheader()
        writer.writerow({c: plain[c] for c in old_columns})
    assert sweep.main(args[: args.index("--isometry-steps")] + args[args.index("--set"):]) == 0  # nothing to do
    (migrated,) = read(out)
    assert migrated["isometry_steps"] == "0" and migrated["jsv_pruned_mean"] == ""
    with out.open(newline="") as f:
        assert next(csv.reader(f)) == sweep.COLUMNS


def test_protocol_hashes_scope_and_its_distribution_alike():
    """Rows written while the configs said ``scope: global`` keep their protocol now they say
    ``distribution: global``; another distribution, or isometry as a per-run axis, is told apart correctly."""
    import sweep

    def config(**prune):
        return {"model": {}, "data": {}, "trainer": {"callbacks": [{"class_path": "lightning_synflow.PruneAtInit", "init_args": prune}]}}

    assert sweep.protocol_of(config(scope="global")) == sweep.protocol_of(config(distribution="global"))
    assert sweep.protocol_of(config(scope="layerwise")) == sweep.protocol_of(config(distribution="uniform"))
    assert sweep.protocol_of(config(distribution="erk")) != sweep.protocol_of(config(distribution="global"))
    assert sweep.protocol_of(config(isometry_steps=100)) == sweep.protocol_of(config())


def test_sweep_extension_rule():
    import sweep

    def row(method, x, seed, acc, protocol="p"):
        return {"protocol": protocol, "method": method, "log10_compression": str(x), "seed": str(seed), "test_acc_final": str(acc)}

    rows = [row("synflow", 3.0, s, 0.5) for s in (0, 1)] + [row("random", 3.0, s, 0.1) for s in (0, 1)]
    rows += [row("snip", 3.0, 0, 0.6)]  # one seed missing: not extended yet
    rows += [row("grasp", 3.5, s, 0.4) for s in (0, 1)] + [row("grasp", 3.0, s, 0.8) for s in (0, 1)]
    rows += [row("magnitude", 3.0, s, 0.9, protocol="other") for s in (0, 1)]
    runs = sweep.extension(rows, "p", ["synflow", "random", "snip", "grasp", "magnitude"], [0, 1], 0.5, 4.0, 0.2)
    assert [(r.method, r.log10_compression, r.seed) for r in runs] == [
        ("synflow", 3.5, 0), ("synflow", 3.5, 1), ("grasp", 4.0, 0), ("grasp", 4.0, 1)
    ]  # fmt: skip
    assert sweep.extension(rows, "p", ["grasp"], [0, 1], 0.5, 3.5, 0.2) == []  # capped


def test_sweep_presets_and_unknown_method(capsys):
    import sweep

    for name, preset in sweep.PRESETS.items():
        assert preset.config.is_file(), name
    fashion = sweep.PRESETS["fashion-mnist"]
    assert set(fashion.methods) == {"synflow", "snip", "grasp", "force", "magnitude", "random"}
    assert {1.0, 2.0, 3.0} <= set(fashion.log10_compressions) and fashion.seeds == (0, 1, 2)
    assert sweep.PRESETS["cifar10-vgg16"].log10_compressions[-1] == 3.0
    with pytest.raises(SystemExit, match="unknown method"):
        sweep.main(["--preset", "digits", "--methods", "nope", "--dry-run"])
    assert sweep.log10_from_sparsity(0.999) == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------- plot


def write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in columns} for r in rows)


def test_plot_writes_png_with_reference(tmp_path, capsys):
    import plot_sweep
    import sweep

    rows = []
    for dataset, model in (("fashion-mnist", "lenet5-wide"), ("cifar10", "vgg16_bn")):
        for seed in range(3):
            rows.append(dict(dataset=dataset, model=model, method="dense", log10_compression=0.0, seed=seed, test_acc_final=0.9, protocol="p"))
            for method, drop in (("synflow", 0.05), ("random", 0.3)):
                for x in (1.0, 2.0, 3.0):
                    acc = max(0.1, 0.9 - drop * x + 0.01 * seed)
                    rows.append(dict(dataset=dataset, model=model, method=method, log10_compression=x, seed=seed, test_acc_final=acc, test_acc_best=acc, protocol="p"))
    sweep_csv, ref_csv = tmp_path / "sweep.csv", tmp_path / "ref.csv"
    write_rows(sweep_csv, rows, sweep.COLUMNS)
    ref_columns = ["dataset", "model", "method", "log10_compression", "sparsity", "top1_mean", "top1_min", "top1_max"]
    ref = [dict(dataset="cifar10", model="vgg16_bn", method=m, log10_compression=x, sparsity=1 - 10**-x, top1_mean=90 - 5 * x, top1_min=89 - 5 * x, top1_max=91 - 5 * x)
           for m in ("synflow", "snip") for x in (0.0, 1.5, 3.0)]  # fmt: skip
    write_rows(ref_csv, ref, ref_columns)

    png = tmp_path / "fig" / "sweep.png"
    assert plot_sweep.main([str(sweep_csv), "--out", str(png), "--reference", str(ref_csv), "--table", str(tmp_path / "t.md")]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = (tmp_path / "t.md").read_text()
    assert "| SynFlow |  | 86.0 (85.0-87.0) | 81.0 (80.0-82.0) | 76.0 (75.0-77.0) |" in table and "**Fashion-MNIST, lenet5-wide**" in table

    curves = plot_sweep.sweep_curves(read(sweep_csv))
    assert curves[("cifar10", "vgg16_bn")]["random"][3.0][1:] == (10.0, 10.0, 3)  # min, max, seeds
    reference = plot_sweep.reference_curves(read(ref_csv))
    # The CIFAR-10 panel gets the paper's curves overlaid; Fashion-MNIST has no match, so the paper's
    # CIFAR-10 VGG-16 curves get a panel of their own, titled as a reference from other data.
    fig = plot_sweep.plot(curves, reference)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 3 and "REFERENCE from a different data set" in titles[2]
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "SynFlow (paper)" in labels and "SynFlow" in labels
    assert not any("(paper)" in label for label in fig.axes[1].get_legend_handles_labels()[1])
    only_fashion = plot_sweep.plot({("fashion-mnist", "lenet5-wide"): curves[("fashion-mnist", "lenet5-wide")]}, reference)
    assert len(only_fashion.axes) == 2


def test_plot_draws_runs_with_isometry_steps_as_curves_of_their_own(tmp_path):
    import plot_sweep
    import sweep

    rows = [dict(dataset="fashion-mnist", model="m", method="dense", log10_compression=0.0, seed=0, test_acc_final=0.9, protocol="p")]
    for steps, acc in ((0, 0.1), (100, 0.8)):
        rows += [dict(dataset="fashion-mnist", model="m", method="random", log10_compression=1.5, seed=0, isometry_steps=steps,
                      test_acc_final=acc, protocol="p")]  # fmt: skip
    rows += [dict(dataset="fashion-mnist", model="m", method="random", log10_compression=1.0, seed=0, test_acc_final=0.7, protocol="p")]
    path = tmp_path / "sweep.csv"
    write_rows(path, rows, sweep.COLUMNS)
    curves = plot_sweep.sweep_curves(read(path))[("fashion-mnist", "m")]
    assert curves["random"] == {1.0: (70.0, 70.0, 70.0, 1), 1.5: (10.0, 10.0, 10.0, 1)}
    assert curves["random + AI"] == {1.5: (80.0, 80.0, 80.0, 1)}
    assert set(plot_sweep.sweep_curves(read(path), isometry="without")[("fashion-mnist", "m")]) == {"dense", "random"}
    assert set(plot_sweep.sweep_curves(read(path), isometry="with")[("fashion-mnist", "m")]) == {"dense", "random + AI"}
    fig = plot_sweep.plot({("fashion-mnist", "m"): curves})
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["Random + AI"].get_color() == lines["Random"].get_color() and lines["Random + AI"].get_linestyle() == ":"
    assert "| Random + AI |" in plot_sweep.table({("fashion-mnist", "m"): curves})


def test_isometry_scatter_pairs_each_run_with_the_spectrum_it_trained_from(tmp_path):
    """A run with isometry steps is placed at its after-isometry spectrum; one without at its after-pruning
    spectrum, its own or, for rows written before those columns, its twin's (same method, compression, seed)."""
    import plot_isometry

    def row(method, seed, steps, acc, **jsv):
        return {"protocol": "p", "method": method, "log10_compression": "2.0", "seed": str(seed), "isometry_steps": str(steps),
                "test_acc_final": str(acc), **{f"jsv_{k}": str(v) for k, v in jsv.items()}}  # fmt: skip

    stats = lambda stage, v: {f"{stage}_{s}": v for s in plot_isometry.STATS}  # noqa: E731
    rows = [
        row("random", 0, 0, 0.1),  # the study's old row: no spectrum of its own
        row("random", 0, 100, 0.8, **stats("pruned", 1e-4), **stats("isometry", 0.5)),
        row("synflow", 0, 0, 0.85, **stats("pruned", 0.2)),
        row("snip", 1, 0, 0.5),  # no twin: left out
        {"protocol": "p", "method": "dense", "log10_compression": "0", "seed": "0", "test_acc_final": "0.9"},
    ]
    pts = plot_isometry.points(rows)
    assert [(p["method"], p["steps"], p["acc"], p["mean"]) for p in pts] == [
        ("random", 0, 10.0, 1e-4), ("random", 100, 80.0, 0.5), ("synflow", 0, 85.0, 0.2)
    ]  # fmt: skip
    assert plot_isometry.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert plot_isometry.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert plot_isometry.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.866, abs=1e-3)  # ties share their rank
    fig = plot_isometry.scatter(pts)
    assert [ax.get_title() for ax in fig.axes][0] == "mean: Spearman +0.50 (n=3)"  # accuracy ranks 1, 2, 3 against mean ranks 1, 3, 2


# ---------------------------------------------------------------------------------------------- configs


PAPER_RECIPES = {  # the authors' Fig. 6 command lines: lr, milestones, gamma, weight decay, epochs
    "vgg": (0.1, [60, 120], 0.1, 1e-4, 160),
    "resnet18": (0.01, [60, 120], 0.2, 5e-4, 160),
    "tinyimagenet": (0.01, [30, 60, 80], 0.01, 1e-4, 100),
}


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_configs(path, monkeypatch, capsys):
    config = yaml.safe_load(path.read_text())
    prune = config["trainer"]["callbacks"][-1]
    assert prune["class_path"] == "lightning_synflow.PruneAtInit"  # last: the CLI overrides address it
    assert "compression" in prune["init_args"] and "sparsity" not in prune["init_args"]
    model = config["model"]
    assert model["momentum"] == 0.9 and config["data"]["init_args"]["batch_size"] == 128
    if path.stem == "fashion_mnist_lenet5_channels":  # the Fashion-MNIST recipe, pruned by whole channels
        assert prune["init_args"]["granularity"] == "channel" and prune["init_args"]["distribution"] == "uniform"
    if not path.stem.startswith("fashion_mnist_lenet5"):
        key = "tinyimagenet" if path.stem.startswith("tinyimagenet") else "resnet18" if "resnet18" in path.stem else "vgg"
        lr, milestones, gamma, wd, epochs = PAPER_RECIPES[key]
        assert (model["lr"], model["milestones"], model["gamma"], model["weight_decay"], config["trainer"]["max_epochs"]) == (lr, milestones, gamma, wd, epochs)
        assert model["backbone"]["init_args"]["num_classes"] == model["num_classes"] == {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200}[path.stem.split("_")[0]]
    # The whole config parses, with the documented overrides of scorer and compression.
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    import train

    overrides = ["--trainer.callbacks.init_args.scorer=snip", "--trainer.callbacks.init_args.compression=1000"]
    with pytest.raises(SystemExit) as exit_:
        train.main(["fit", "--config", str(path), *overrides, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["callbacks"][-1]["init_args"]["scorer"] == "snip"
    assert printed["trainer"]["callbacks"][-1]["init_args"]["compression"] == 1000


def test_fashion_config_builds_with_overrides(fashion_dir, tmp_path, monkeypatch):
    from classifier import LeNet5

    from lightning_synflow import PruneAtInit

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    import train

    cli = train.main(
        ["--config", str(FASHION), "--trainer.callbacks.init_args.scorer=random", "--trainer.callbacks.init_args.compression=1000",
         "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", f"--data.init_args.data_dir={fashion_dir}"],
        run=False,
    )  # fmt: skip
    assert isinstance(cli.model.backbone, LeNet5) and cli.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    (prune,) = [c for c in cli.trainer.callbacks if isinstance(c, PruneAtInit)]
    assert prune.scorer.name == "random" and prune.density == pytest.approx(1e-3)
    weights = sum(p.numel() for n, p in cli.model.named_parameters() if n.endswith("weight"))
    assert weights == 676_854
