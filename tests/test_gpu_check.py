"""The GPU check (benchmarks/gpu_check.py) runs end to end in its quick mode on the CPU, so that it is ready the
day a GPU is: every part reports, the CPU's checks pass, the CUDA-only ones say they are skipped and why. Its
runner turns an overrun or an exception of one part into a row and goes on, and refuses bad options first."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"

#: What the quick run checks on a CPU, each of which must pass.
CPU_PASSES = [
    ("masks", "magnitude, resnet20, sparsity 0.99: bit for bit"),
    ("masks", "random (seed 0), resnet20, sparsity 0.99: selection bit for bit"),
    ("masks", "erk (seed 0), resnet20, sparsity 0.99: selection bit for bit"),
    ("masks", "uniform (seed 0), resnet20, sparsity 0.99: selection bit for bit"),
    ("masks", "synflow, 3 rounds, resnet20, sparsity 0.99: TF32 off"),
    ("masks", "ntksap, 2 rounds, resnet20, sparsity 0.99: TF32 off"),
    ("masks", "snip, 1 round, resnet20, sparsity 0.99: TF32 off"),
    ("mask_overhead", "resnet20, bf16-mixed: pruned weights zero after the steps"),
    ("mask_overhead", "resnet20, 16-mixed: pruned weights zero after the steps"),
    *[("fit", f"{strategy}: {check}") for strategy in ("ddp", "model_parallel") for check in (
        "pruned weights exactly zero after every step, every rank", "kept exactly round(d * N)",
        "the same masks on every rank", "no momentum on a pruned weight")],
    ("semi_structured", "2:4 pruning (128-256-128 MLP, bf16) leaves every Linear eligible"),
    ("semi_structured", "to_semi_structured on cpu refuses before any change"),
]
#: What it skips on a CPU without the authors' code, and the reason each row must give.
CPU_SKIPS = [
    ("masks", "synflow, 3 rounds, resnet20, sparsity 0.99: TF32 as set", "CUDA only"),
    ("masks", "ntksap, 2 rounds, resnet20, sparsity 0.99: TF32 as set", "CUDA only"),
    ("masks", "snip, 1 round, resnet20, sparsity 0.99: TF32 as set", "CUDA only"),
    ("synflow", "authors' code, resnet20, 2 rounds", "no clone of the authors' code given"),
    ("synflow", "authors' code, vgg11_bn, 2 rounds", "no clone of the authors' code given"),
    ("semi_structured", "2:4 kernels against dense: forward, forward+backward", "CUDA only"),
]
CPU_MEASURES = [
    ("masks", "synflow, 3 rounds, resnet20, sparsity 0.99: two runs on the device"),
    ("synflow", "ours, resnet20, 2 rounds"),
    ("synflow", "ours, vgg11_bn, 2 rounds"),
    ("mask_overhead", "resnet20, bf16-mixed: step time against dense"),
    ("mask_overhead", "resnet20, 16-mixed: step time against dense"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's quick run; on a GPU run the full check instead")
def test_quick_run_on_cpu_reports_every_part(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SYNFLOW_AUTHORS_CODE"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check-quick.json").read_text())
    rows = report["rows"]
    assert report["parts"] == ["masks", "synflow", "mask_overhead", "fit", "semi_structured"]
    assert report["environment"]["quick"] and report["environment"]["device"] == "cpu" and "gpu" not in report["environment"]
    by_status = {s: [(r["part"], r["check"]) for r in rows if r["status"] == s] for s in ("pass", "measured", "skipped")}
    assert sorted(by_status["pass"]) == sorted(CPU_PASSES)
    assert sorted(by_status["measured"]) == sorted(CPU_MEASURES)
    assert sorted(by_status["skipped"]) == sorted((p, c) for p, c, _ in CPU_SKIPS)
    assert len(rows) == len(CPU_PASSES) + len(CPU_MEASURES) + len(CPU_SKIPS)  # nothing failed, erred or timed out
    results = {(r["part"], r["check"]): r for r in rows}
    for part, check, reason in CPU_SKIPS:
        assert results[part, check]["result"].startswith(reason)
    magnitude = results["masks", "magnitude, resnet20, sparsity 0.99: bit for bit"]["data"]
    assert magnitude["identical"] and magnitude["kept_device"] == magnitude["kept_cpu"] == round(270_896 / 100)
    for strategy in ("ddp", "model_parallel"):
        fit = results["fit", f"{strategy}: pruned weights exactly zero after every step, every rank"]
        (rank,) = fit["data"]["ranks"]
        assert rank["world_size"] == 1 and rank["backend"] == "gloo" and rank["zero_after_step"] == [True] * 3
    # The printed table is the Markdown report's, one line per row in order, with each row's status.
    markdown = (tmp_path / "gpu_check-quick.md").read_text()
    assert markdown.strip() in proc.stdout and "QUICK RUN" in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| part ")]
    assert [line.split(" | ")[:4] for line in lines] == [["| " + r["part"], r["check"], r["device"], r["status"]] for r in rows]


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))


def _run(gpu_check, tmp_path, parts):
    ctx = gpu_check.Context(torch.device("cpu"), gpu_check.QUICK, 0, None, True)
    return gpu_check.Run(argparse.Namespace(out_dir=tmp_path, parts=parts), ctx)


def test_a_part_that_overruns_or_raises_is_a_row_and_the_run_goes_on(gpu_check, tmp_path):
    Row = gpu_check.Row
    run = _run(gpu_check, tmp_path, ["slow", "broken", "fine"])

    def slow():
        yield Row("slow", "first", "pass", "done")
        time.sleep(30)
        yield Row("slow", "never", "pass", "")

    def broken():
        yield Row("broken", "first", "measured", "1 s")
        raise RuntimeError("boom")

    start = time.monotonic()
    gpu_check.run_part(run, "slow", slow, 0.5)
    assert time.monotonic() - start < 10
    gpu_check.run_part(run, "broken", broken, 10)
    gpu_check.run_part(run, "fine", lambda: iter([Row("fine", "only", "pass", "ok")]), 10)
    assert [(r.part, r.check, r.status) for r in run.rows] == [
        ("slow", "first", "pass"), ("slow", "time limit", "timeout"), ("broken", "first", "measured"),
        ("broken", "part", "error"), ("fine", "only", "pass"),
    ]
    assert run.rows[1].result == "ran past its limit of 0.5 s; the rows above are what finished"
    assert run.rows[3].result == "RuntimeError: boom"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and run.current is None  # nothing left armed
    # A check that raises is an error row with the message; the report's exit status says something failed.
    row = gpu_check.checked("masks", "a check", torch.device("cpu"), lambda: 1 / 0)
    assert (row.status, row.result) == ("error", "ZeroDivisionError: division by zero")
    assert run.write() == 1
    written = json.loads((tmp_path / "gpu_check-quick.json").read_text())["rows"]
    assert [(r["part"], r["status"]) for r in written] == [(r.part, r.status) for r in run.rows]


def test_a_hung_part_stops_the_run_with_the_report_written(gpu_check, tmp_path):
    run = _run(gpu_check, tmp_path, ["masks", "synflow", "fit"])
    run.rows.append(gpu_check.Row("masks", "magnitude", "pass", "identical"))
    assert run.stop_hung("synflow") == 1
    written = json.loads((tmp_path / "gpu_check-quick.json").read_text())["rows"]
    assert [(r["part"], r["check"], r["status"]) for r in written] == [
        ("masks", "magnitude", "pass"), ("synflow", "time limit", "timeout"), ("fit", "not run", "timeout"),
    ]
    assert "stuck in native code" in written[1]["result"] and "the run stopped in synflow" in written[2]["result"]


def test_fits_that_overrun_leave_no_process_behind(gpu_check, tmp_path, monkeypatch):
    started = []
    popen = subprocess.Popen

    def record(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", record)
    run = _run(gpu_check, tmp_path, ["fit"])
    gpu_check.run_part(run, "fit", lambda: gpu_check.part_fit(run.ctx), 1.0)
    assert [(r.part, r.check, r.status) for r in run.rows] == [("fit", "time limit", "timeout")]
    (proc,) = [p for p in started if "--fit-out" in p.args]
    assert proc.returncode == -signal.SIGKILL


def test_bad_options_are_refused_before_any_work(gpu_check, tmp_path, capsys):
    for argv, message in (
        (["--limit", "masks=soon"], "--limit takes PART=SECONDS with PART one of masks, synflow, mask_overhead, fit, semi_structured and SECONDS > 0, got 'masks=soon'"),
        (["--limit", "gpu=10"], "got 'gpu=10'"),
        (["--limit", "fit=0"], "got 'fit=0'"),
        (["--budget", "-5"], "--budget must be a positive number of seconds, got -5.0"),
        (["--authors-code", str(tmp_path)], "is not a checkout of ganguli-lab/Synaptic-Flow"),
    ):
        with pytest.raises(SystemExit) as exit:
            gpu_check.main(["--quick", "--out-dir", str(tmp_path), *argv])
        assert exit.value.code == 2 and message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.main(["--out-dir", str(tmp_path)])
        assert "no CUDA device here: the full check is for a GPU; --quick runs the tiny sizes on the CPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no report: nothing ran
