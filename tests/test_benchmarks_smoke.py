"""Every benchmark runs end to end in its quick mode (small models, few rounds, fresh processes)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run_benchmark(name, *args, timeout=300):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_scorer_benchmark_quick(tmp_path):
    out = tmp_path / "rows.json"
    stdout = _run_benchmark("scorers.py", "--quick", "--models", "resnet20", "--scorers", "magnitude", "--json", str(out))
    assert "| model | scorer | iterations | data | time (s) | peak memory (MB) |" in stdout
    assert "| resnet20 | magnitude | 1 | none |" in stdout
    (row,) = json.loads(out.read_text())
    assert row["kept"] == round(row["total"] / 100) and row["total"] == 270_896  # ResNet-20 conv + linear weights
    assert row["seconds"] > 0 and row["peak_mb"] >= 0 and row["threads"] == 1


def test_scorer_benchmark_runs_its_children_on_the_threads_asked(tmp_path):
    out = tmp_path / "rows.json"
    stdout = _run_benchmark("scorers.py", "--quick", "--threads", "2", "--models", "resnet20", "--scorers", "magnitude", "--json", str(out))
    assert "2 thread(s), fresh process per row" in stdout
    assert [row["threads"] for row in json.loads(out.read_text())] == [2]


def test_mask_overhead_benchmark_quick(tmp_path):
    # One thread: on a busy machine, threads fighting other processes for the cores make steps seconds long.
    out = tmp_path / "mask_overhead.json"
    stdout = _run_benchmark("mask_overhead.py", "--quick", "--models", "resnet18", "--threads", "1", "--json", str(out))
    assert "| model | threads | variant | median step (ms) | mean step (ms) | overhead vs dense |" in stdout
    for variant in ("dense", "lightning_synflow", "torch.nn.utils.prune"):
        assert f"| resnet18 | 1 | {variant} |" in stdout
    assert "| model | threads | mask_grads_ (ms) | apply_ (ms) | both (ms) | % of dense step |" in stdout
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "lightning_synflow", "torch.nn.utils.prune"}
    for r in rows.values():
        assert r["model"] == "resnet18" and r["threads"] == 1 and len(r["step_ms"]) == 2
        assert r["median_ms"] > 0 and r["mean_ms"] > 0
    assert "overhead_pct" not in rows["dense"] and "overhead_pct" in rows["lightning_synflow"]
    (ops,) = result["mask_ops"]
    assert ops["mask_grads_median_ms"] > 0 and ops["apply_median_ms"] > 0
    (zero,) = result["zero_check"]
    assert result["zero_check_passed"] and zero["nonzero"] == {"lightning_synflow": 0, "torch.nn.utils.prune": 0}
    assert 0.98 < zero["pruned"] / zero["total"] < 1  # 99% pruned, at random


def test_synflow_speed_benchmark_quick(tmp_path):
    out = tmp_path / "rows.json"
    stdout = _run_benchmark(
        "synflow_speed.py", "--quick", "--methods", "lightning_synflow", "lightning_synflow float64", "--json", str(out)
    )
    assert "| model | method | floor: bare fwd+bwd (s) | pruning (s) | pruning / floor |" in stdout
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["lightning_synflow", "lightning_synflow float64"]
    for r in rows:
        assert r["model"] == "resnet20" and r["iterations"] == 2 and r["threads"] == 1
        assert r["kept"] == round(r["total"] / 100) and r["total"] == 270_896
        assert r["floor_s"] > 0 and r["seconds"] > 0 and r["peak_mb"] >= 0
    assert rows[1]["not_in_float64"] == 0  # the float64 row compared with itself


def test_synflow_scale_benchmark_quick(tmp_path):
    out = tmp_path / "rows.json"
    stdout = _run_benchmark("synflow_scale.py", "--quick", "--blocks", "1", "2", "--width", "32", "--json", str(out))
    assert "| prunable weights | blocks | floor (s) | pruning (s) |" in stdout
    rows = json.loads(out.read_text())
    assert [r["prunable"] for r in rows] == [8 * 32**2 + 320, 2 * 8 * 32**2 + 320]  # blocks + the 10-way head
    assert all(r["kept"] == round(r["prunable"] / 100) and r["mask_bytes"] == r["prunable"] for r in rows)
