"""The package's house as tools/house.py measures it: every module parses and no import closes a cycle
(issue 25: a cycle, even one closed by a lazy import, means two modules that cannot be read apart)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _house():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "house.py"), "--root", str(ROOT), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_module_parses():
    house = _house()
    assert house["rooms"] == len(list((ROOT / "lightning_synflow").rglob("*.py")))
    assert house["parse_errors"] == {}


def test_no_import_cycle():
    house = _house()
    assert house["cycles"] == [], f"import cycles (lazy imports included): {house['cycles']}"


def test_a_cycle_is_found(tmp_path):
    """The check above can fail: a lazy import back from b to a is a cycle."""
    package = tmp_path / "lightning_synflow"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from lightning_synflow.b import f\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "house.py"), "--root", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    house = json.loads(proc.stdout)
    assert house["cycles"] == [["a", "b"]]
    assert house["lazy_arrows"] == ["b -> a"]


def test_the_wings_import_downward_only():
    """The folders show the architecture: no wing imports a wing declared above it, no wing-level cycle, and
    no module inside the package imports the package's façade (its __init__)."""
    house = _house()
    assert house["unranked_wings"] == [], "a new folder needs its place in tools/house.py's WING_ORDER"
    assert house["upward_arrows"] == {} and house["wing_cycles"] == []
    assert house["modules_importing_facade"] == []


def test_only_the_lightning_wing_imports_lightning_and_the_callback_stays_small():
    house = _house()
    assert house["lightning_importers"] and all(m.startswith("lightning.") for m in house["lightning_importers"])
    # the life cycle and nothing else (issue 25: about ten of the package's modules; it was 21)
    assert len(house["callback_imports"]) <= 11, house["callback_imports"]
