"""The scorer benchmark runs end to end (quick mode: one small model, one scorer, one fresh process)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scorers.py"


def test_scorer_benchmark_quick(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", "resnet20", "--scorers", "magnitude", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| model | scorer | iterations | data | time (s) | peak memory (MB) |" in proc.stdout
    assert "| resnet20 | magnitude | 1 | none |" in proc.stdout
    (row,) = json.loads(out.read_text())
    assert row["kept"] == round(row["total"] / 100) and row["total"] == 270_896  # ResNet-20 conv + linear weights
    assert row["seconds"] > 0 and row["peak_mb"] >= 0 and row["threads"] == 1
