"""Old module paths keep importing after the move into wings (lightning_synflow/_moved.py).

The finder is checked on a small package of its own (so the check holds before and after the move), and on
the package's own table: every entry whose new module exists and whose old file is gone must give the very
same module, warn once naming the new path, and resolve ``old.Name`` as jsonargparse's ``class_path`` and
pickle do (``__import__(old, fromlist=[name])``). Before the move no entry qualifies."""

import json
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from lightning_synflow import _moved

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """``toypkg.old`` moved to ``toypkg.wing.new``, which defines ``Thing``."""
    (tmp_path / "toypkg" / "wing").mkdir(parents=True)
    (tmp_path / "toypkg" / "__init__.py").write_text("")
    (tmp_path / "toypkg" / "wing" / "__init__.py").write_text("")
    (tmp_path / "toypkg" / "wing" / "new.py").write_text(
        "class Thing:\n    pass\n\nif __name__ == '__main__':\n    print('ran as main')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_moved.MOVED, "toypkg.old", "toypkg.wing.new")
    monkeypatch.setitem(_moved.MOVED, "toypkg.gone", "toypkg.wing.missing")
    _moved.install()
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] == "toypkg"]:
        del sys.modules[name]


def test_old_path_is_the_new_module_with_one_warning(toy_package):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import toypkg.wing.new as new
        import toypkg.old as old
        from toypkg.old import Thing
        import toypkg.old  # noqa: F811  (cached: no second warning)
    assert old is new and Thing is new.Thing
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        "toypkg.old moved to toypkg.wing.new; import it from there (the old path will be removed)"
    ]


def test_class_path_and_pickles_under_the_old_path(toy_package):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from toypkg.wing.new import Thing

        assert getattr(__import__("toypkg.old", fromlist=["Thing"]), "Thing") is Thing  # jsonargparse's way
        data = pickle.dumps(Thing(), protocol=0).replace(b"toypkg.wing.new", b"toypkg.old")
        assert type(pickle.loads(data)) is Thing


def test_python_dash_m_runs_the_new_module(toy_package):
    proc = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c",
         "from lightning_synflow import _moved; _moved.MOVED['toypkg.old'] = 'toypkg.wing.new'; _moved.install();"
         " import runpy; runpy.run_module('toypkg.old', run_name='__main__')"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": f"{toy_package}:{ROOT}", "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ran as main\n" and "moved to toypkg.wing.new" in proc.stderr


def test_missing_new_module_is_an_ordinary_import_error(toy_package):
    with pytest.raises(ModuleNotFoundError):
        import toypkg.gone  # noqa: F401


CHECK_TABLE = textwrap.dedent("""
    import importlib, importlib.util, inspect, json, pickle, warnings
    import lightning_synflow
    from lightning_synflow._moved import MOVED

    def file_exists(name):
        parent, _, leaf = name.rpartition(".")
        try:
            package = importlib.import_module(parent)
        except ModuleNotFoundError:
            return False
        return importlib.machinery.PathFinder.find_spec(leaf, package.__path__) is not None

    def new_exists(name):
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    report = {}
    for old, new in MOVED.items():
        if file_exists(old) or not new_exists(new):
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
            importlib.import_module(old)
        named = [n for n, o in vars(module).items()
                 if (inspect.isclass(o) or inspect.isfunction(o)) and o.__module__ == new and not n.startswith("_")]
        ok_attr = ok_pickle = True
        if named:
            obj = getattr(module, named[0])
            ok_attr = getattr(__import__(old, fromlist=[named[0]]), named[0]) is obj
            data = pickle.dumps(obj, protocol=0).replace(new.encode(), old.encode())
            ok_pickle = pickle.loads(data) is obj
        report[old] = {
            "same": module is importlib.import_module(new),
            "warnings": [str(w.message) for w in caught if w.category is DeprecationWarning],
            "attr": ok_attr, "pickle": ok_pickle,
        }
    print(json.dumps(report))
""")


def test_every_moved_module_answers_to_its_old_path():
    proc = subprocess.run([sys.executable, "-c", CHECK_TABLE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    if not report:
        pytest.skip("no module has moved yet")
    for old, result in report.items():
        new = _moved.MOVED[old]
        assert result == {"same": True, "warnings": [f"{old} moved to {new}; import it from there (the old path will be removed)"],
                          "attr": True, "pickle": True}, old


def test_the_random_baselines_old_names_still_work_and_warn():
    """ERK and Uniform, the random scorers' old names (which read as the distributions), stay importable from
    where they were, as the very classes now called ERKRandom and UniformRandom."""
    import lightning_synflow
    from lightning_synflow import scorers
    from lightning_synflow.scorers import erk

    for module in (scorers, erk):
        for old, new in (("ERK", "ERKRandom"), ("Uniform", "UniformRandom")):
            with pytest.warns(DeprecationWarning, match=rf"{module.__name__}\.{old} is now {module.__name__}\.{new}"):
                assert getattr(module, old) is getattr(erk, new)
    with warnings.catch_warnings():  # jsonargparse probes these to shorten distributions.ERK's class path
        warnings.simplefilter("error")
        assert (lightning_synflow.ERK, lightning_synflow.Uniform) == (erk.ERKRandom, erk.UniformRandom)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        lightning_synflow.Nope


def test_the_checkpoint_helpers_still_import_from_the_callback_module():
    from lightning_synflow import checkpointing
    from lightning_synflow.callback import load_shrunk, shrink_to_checkpoint

    assert (load_shrunk, shrink_to_checkpoint) == (checkpointing.load_shrunk, checkpointing.shrink_to_checkpoint)


def test_a_distribution_class_path_dumps_without_a_warning():
    """``class_path: lightning_synflow.distributions.ERK`` (a current name) parses and dumps without any warning."""
    from jsonargparse import ArgumentParser

    from lightning_synflow.distributions import Distribution

    parser = ArgumentParser()
    parser.add_argument("--d", type=Distribution)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        dumped = parser.dump(parser.parse_args(["--d", '{"class_path": "lightning_synflow.distributions.ERK"}']))
    assert "lightning_synflow.distributions.ERK" in dumped


def test_a_callback_pickled_before_the_plan_unpickles_to_the_same_plan():
    """A PruneAtInit pickled by the release that kept the plan's fields as attributes of their own."""
    import pickle

    from lightning_synflow import PruneAtInit

    for kwargs in (dict(scorer="synflow", sparsity=0.8), dict(scorer="magnitude", granularity="2:4"),
                   dict(scorer="erk", sparsity=0.5, granularity="channel")):
        callback = PruneAtInit(**kwargs)
        state = callback.__getstate__()
        plan = state.pop("plan")
        state.update(scorer=plan.scorer, density=plan.density, iterations=plan.iterations, schedule=plan.schedule,
                     distribution=plan.distribution, invert=plan.invert, shuffle=plan.shuffle,
                     pattern=plan.granularity, granularity=plan.granularity_name)
        old = PruneAtInit.__new__(PruneAtInit)
        old.__setstate__(state)
        assert repr(pickle.loads(pickle.dumps(old)).plan) == repr(plan)  # scorers compare by identity


@pytest.mark.parametrize("module, name, now", [
    ("lightning_synflow.pruning", "resolve_distribution", "lightning_synflow.plan"),
    ("lightning_synflow.masks", "check_weight_norm", "lightning_synflow.parameters"),
    ("lightning_synflow.selection.topk", "budget_groups", "lightning_synflow.selection.selector"),
    ("lightning_synflow.distributed.selection", "kept_counts", "lightning_synflow.distributed.collectives"),
    ("lightning_synflow.distributed.scoring", "preserved_buffers", "lightning_synflow.model_state"),
])
def test_public_names_that_moved_between_modules_still_resolve_with_a_warning(module, name, now):
    import importlib

    new = getattr(importlib.import_module(now), "nonzero_counts" if name == "kept_counts" else name)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} is now {now}\."):
        assert getattr(importlib.import_module(module), name) is new
