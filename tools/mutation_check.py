"""A small mutation check of the core: each deliberate bug below must make the tests it names fail.

Every mutation is a file, exact snippets of today's code and what each becomes, and the tests that must
catch it. For each, the script copies the working tree (the package, tests, benchmarks) into a temporary
folder, puts the bug in the copy, and runs the named tests there with ``PYTHONPATH`` pointing at the copy,
so that subprocess-launched test scripts import the mutated code too. The table says, per mutation:

- ``killed``: the tests failed, as they must;
- ``SURVIVED``: the tests passed with the bug in (a missing test);
- ``STALE``: a snippet no longer occurs exactly once in its file: the code moved (re-anchor the mutation);
- ``ERROR``: pytest could not run the tests (collection or usage error, timeout).

The named tests run once unmutated first (``--no-baseline`` skips this): they must pass, or a kill means
nothing. Exit status 0 only when every mutation was killed. Not part of ``make test`` (minutes, not
seconds): ``make mutation-check``, or ``python tools/mutation_check.py [-k NAME] [--list]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What the copy holds: what the tests import or launch.
COPIED = ("lightning_synflow", "tests", "benchmarks", "examples", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    edits: tuple[tuple[str, str], ...]  # (exact snippet of today's code, what it becomes)
    tests: tuple[str, ...]  # pytest node ids or paths, relative to the repository root
    why: str


CALLBACK = "lightning_synflow/lightning/callback.py"
FIT_PRUNING = "lightning_synflow/lightning/fit_pruning.py"
HOOKS = "        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]\n"
GUARDS = "tests/test_guards.py"

MUTATIONS = (
    # ---- the bugs issue 25 found surviving the suite, and the weak checks
    Mutation(
        "post-hook on the first optimizer only", CALLBACK,
        ((HOOKS, "        self._hooks = [trainer.optimizers[0].register_step_post_hook(self._after_step)]\n"),),
        (f"{GUARDS}::test_every_optimizer_step_reapplies_the_masks_at_once",),
        "a second optimizer's steps leave its pruned weights moved",
    ),
    Mutation(
        "gradients masked after clipping", CALLBACK,
        (("""        if self._bound is not None:
            self._bound.mask_grads_()
""", """        if self._bound is not None:
            plugin, bound = trainer.precision_plugin, self._bound
            clip = plugin.clip_gradients

            def clip_then_mask(*args: Any, **kwargs: Any) -> None:
                clip(*args, **kwargs)
                bound.mask_grads_()
                del plugin.clip_gradients

            plugin.clip_gradients = clip_then_mask
"""),),
        (f"{GUARDS}::test_gradients_are_masked_before_they_are_clipped",),
        "the clipping norm counts the pruned weights' gradients",
    ),
    Mutation(
        "measured density from the masks", "lightning_synflow/masks.py",
        (("nonzero_counts(dict(zip(self.names, self.params)))", "nonzero_counts(dict(zip(self.names, self.masks)))"),),
        (f"{GUARDS}::test_measured_density_is_read_from_the_weights_not_the_masks",
         f"{GUARDS}::test_the_logged_measured_sparsity_counts_zero_weights_the_masks_keep"),
        "the logged measured sparsity agrees with the masks by construction",
    ),
    Mutation(
        "scoring outside the precision's train_step_context", "lightning_synflow/lightning/trainer_data.py",
        (("with _silenced_logging(model), trainer.precision_plugin.train_step_context():",
          "with _silenced_logging(model):"),),
        (f"{GUARDS}::test_data_driven_scorers_score_under_the_precisions_autocast",),
        "SNIP and GraSP score in float32 under bf16-mixed",
    ),
    Mutation(
        "masks not re-applied after steps", CALLBACK,
        (("""        # An optimizer step post-hook: fires only for steps that happened (not for skipped AMP steps).
        self._bound.apply_()""", """        # An optimizer step post-hook: fires only for steps that happened (not for skipped AMP steps).
        pass"""),),
        (f"{GUARDS}::test_every_optimizer_step_reapplies_the_masks_at_once",
         "tests/test_callback.py::test_pruned_weights_and_their_optimizer_state_stay_zero"),
        "an optimizer that moves weights whatever their gradient un-prunes them",
    ),
    Mutation(
        "masks re-applied after every batch, skipped AMP steps too", CALLBACK,
        ((HOOKS, "        self._hooks = []\n"),
         ("    def on_train_epoch_end(", """    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self._bound is not None:
            self._bound.apply_()

    def on_train_epoch_end("""),),
        (f"{GUARDS}::test_masks_are_reapplied_after_the_steps_that_ran_and_not_after_skipped_ones",),
        "work after steps that never ran, and pruned weights live between two optimizers' steps",
    ),
    Mutation(
        "DDP mask broadcast removed", FIT_PRUNING,
        (("        masks = broadcast_masks(masks, device=trainer.strategy.root_device)", "        pass"),),
        ("tests/test_ddp.py::test_all_ranks_prune_identically_and_stay_in_sync",),
        "ranks whose own scoring differs (random positions, shuffle) keep different masks",
    ),
    Mutation(
        "collapse warned twice", FIT_PRUNING,
        (("""    if report.collapsed:
        rank_zero_warn(""", """    for _ in [1, 2] if report.collapsed else []:
        rank_zero_warn("""),),
        ("tests/test_callback.py::test_collapse_is_warned_once",),
        "a warning repeated",
    ),
    Mutation(
        "CLI figures all saved from the first figure", "lightning_synflow/analysis/cli.py",
        (('s.plots.save_figure(fig, s.out / f"{k}.png")', 's.plots.save_figure(next(iter(s.figures.values())), s.out / f"{k}.png")'),),
        ("tests/test_analysis_cli.py::test_cli_figures_for_the_diagnostics",),
        "three PNG files of one figure",
    ),
    Mutation(
        "peak memory growth taken the wrong way round", "benchmarks/_machine.py",
        (('self.mb = max(0, peak - self.before_kb) / 1024', 'self.mb = max(0, self.before_kb - peak) / 1024'),),
        ("tests/test_benchmarks_smoke.py::test_sharded_memory_benchmark_quick",),
        "a peak of 0 MB for a call that allocates its masks",
    ),
    Mutation(
        "float64 masks compared with themselves", "benchmarks/synflow_speed.py",
        (("out[method] = sum(int((masks[n] & ~ref[n]).sum()) for n in ref)",
          "out[method] = sum(int((ref[n] & ~ref[n]).sum()) for n in ref)"),),
        ("tests/test_benchmarks_smoke.py::test_synflow_speed_counts_the_kept_weights_the_float64_masks_do_not_keep",),
        "every method reported equal to float64",
    ),
    # ---- the core: ranking, schedules, SynFlow, masks, callback hooks, isolation
    Mutation(
        "ranking: ties kept at the later position", "lightning_synflow/selection/topk.py",
        (("chosen[ties[-need:] if lowest else ties[:need]] = True", "chosen[ties[:need] if lowest else ties[-need:]] = True"),),
        ("tests/test_topk.py",),
        "ties go to the earlier tensor and lower index",
    ),
    Mutation(
        "loop: the invert ablation ignored", "lightning_synflow/loop.py",
        (("        if plan.invert:  # the ablation", "        if False:  # the ablation"),),
        ("tests/test_ablations.py", "tests/test_mask_digests.py"),
        "invert keeps the lowest scores",
    ),
    Mutation(
        "loop: budgets blind to the living weights", "lightning_synflow/loop.py",
        (("selector.alive_counts() if scorer.monotone else None)", "None)"),),
        ("tests/test_mask_digests.py", "tests/test_erk.py", "tests/test_pruning.py"),
        "a layer's budget never asks for more than it still has alive",
    ),
    Mutation(
        "ranking: kept count rounds down", "lightning_synflow/schedules.py",
        (("return min(total, math.floor(density * total + 0.5))", "return min(total, math.floor(density * total))"),),
        ("tests/test_schedules.py", "tests/test_topk.py"),
        "round(d * N) weights kept",
    ),
    Mutation(
        "schedule: exponential steps one round short", "lightning_synflow/schedules.py",
        (("return [final_density ** (t / iterations) for t in steps]",
          "return [final_density ** (t / (iterations + 1)) for t in steps]"),),
        ("tests/test_schedules.py",),
        "the last round does not reach the density asked",
    ),
    Mutation(
        "schedule: linear off by one", "lightning_synflow/schedules.py",
        (("(1.0 - final_density) * (iterations - t) / iterations for t in steps]",
          "(1.0 - final_density) * (iterations - t) / (iterations + 1) for t in steps]"),),
        ("tests/test_schedules.py",),
        "linear densities",
    ),
    Mutation(
        "SynFlow: weights not made absolute", "lightning_synflow/scorers/synflow.py",
        (("name: p.detach().to(state.dtype, memory_format=torch.contiguous_format, copy=True).abs_()",
          "name: p.detach().to(state.dtype, memory_format=torch.contiguous_format, copy=True)"),),
        ("tests/test_synflow.py",),
        "the linearised network keeps the signs",
    ),
    Mutation(
        "SynFlow: scored in train mode", "lightning_synflow/scorers/synflow.py",
        (("""    ) -> dict[str, Tensor]:
        model.eval()
        if is_sharded_model(living.masks):""", """    ) -> dict[str, Tensor]:
        model.train()
        if is_sharded_model(living.masks):"""),),
        ("tests/test_synflow.py",),
        "normalisation layers use the all-ones batch's statistics",
    ),
    Mutation(
        "SynFlow: weights not restored after scoring in place", "lightning_synflow/scorers/synflow.py",
        (("            torch.copysign(params[name].detach(), w, out=w).clamp_min_(-0.0)\n", "            pass\n"),),
        ("tests/test_synflow.py",),
        "the next round scores the scores",
    ),
    Mutation(
        "masks: apply_ zeroes nothing", "lightning_synflow/masks.py",
        (("            torch._foreach_mul_(self._weights, self._local_masks)", "            pass"),),
        ("tests/test_masks.py", "tests/test_callback.py"),
        "pruned weights stay",
    ),
    Mutation(
        "callback: gradients not masked", CALLBACK,
        (("""        if self._bound is not None:
            self._bound.mask_grads_()
""", """        pass
"""),),
        ("tests/test_callback.py::test_pruned_weights_and_their_optimizer_state_stay_zero",),
        "optimizer state of pruned weights leaves zero",
    ),
    Mutation(
        "callback: any model keeps the previous model's masks", CALLBACK,
        (("previous = self._masks is not None and self._owner is not None and self._owner() is pl_module",
          "previous = self._masks is not None and self._owner is not None"),),
        ("tests/test_callback_setups.py::test_a_different_model_is_pruned_afresh",),
        "a different model is not pruned afresh",
    ),
    Mutation(
        "isolation: Python's random state not restored", "lightning_synflow/lightning/isolation.py",
        (("            random.setstate(py_state)\n", "            pass\n"),),
        ("tests/test_isolation.py",),
        "scoring draws from the stream training uses",
    ),
    Mutation(
        "isolation: attributes added while scoring kept", "lightning_synflow/lightning/isolation.py",
        (("                del state[key]\n", "                pass\n"),),
        ("tests/test_isolation.py",),
        "a training step's side effects outlive scoring",
    ),
    Mutation(
        "isolation: tensors restored as new objects", "lightning_synflow/lightning/isolation.py",
        (("""    if isinstance(obj, Tensor):
        with torch.no_grad():""", """    if isinstance(obj, Tensor):
        return contents
        with torch.no_grad():"""),),
        ("tests/test_isolation.py", "tests/test_lifecycle_hparams.py"),
        "other references to a metric's tensor state see the scoring's values",
    ),
    Mutation(
        "N:M and channels: the best left over may repeat a floor", "lightning_synflow/selection/topk.py",
        (("rest = [~f if c is None else c & ~f for f, c in zip(floors, candidates)]", "rest = list(candidates)"),),
        ("tests/test_granularity.py", "tests/test_mask_digests.py"),
        "fewer weights kept than asked",
    ),
)


def apply(mutation: Mutation, copy: Path) -> str | None:
    """Put the bug into ``copy``; ``None``, or why it is stale."""
    path = copy / mutation.file
    if not path.exists():
        return f"{mutation.file} does not exist"
    text = path.read_text()
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            first = old.strip().splitlines()[0][:70]
            return f"snippet found {count} times in {mutation.file}: {first!r}"
        text = text.replace(old, new)
    path.write_text(text)
    return None


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, float, str]:
    """(pytest's exit status or None on timeout, seconds, the tail of its output)."""
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    env.update(PYTHONPATH=str(copy), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, "timed out"
    return proc.returncode, time.perf_counter() - start, (proc.stdout + proc.stderr)[-2000:]


def fresh_copy(base: Path, name: str) -> Path:
    copy = base / name
    for item in COPIED:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, copy / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        elif src.exists():
            shutil.copy2(src, copy / item)
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default=None, help="only the mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the named tests")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    parser.add_argument("-v", "--verbose", action="store_true", help="print pytest's output of every run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k is None or args.k in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name} [{m.file}] -> {' '.join(m.tests)}\n    catches: {m.why}")
        return 0
    if not chosen:
        parser.error(f"no mutation's name contains {args.k!r}")
    start = time.perf_counter()
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        base = Path(tmp)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            rc, seconds, out = run_tests(fresh_copy(base, "baseline"), tests, args.timeout * 2)
            print(f"baseline: the named tests {'pass' if rc == 0 else 'FAIL'} unmutated ({seconds:.0f} s)", flush=True)
            if rc != 0:
                print(out)
                return 2
        for i, m in enumerate(chosen):
            copy = fresh_copy(base, f"m{i}")
            stale = apply(m, copy)
            if stale:
                rows.append((m, "STALE", 0.0, stale))
            else:
                rc, seconds, out = run_tests(copy, m.tests, args.timeout)
                status = {0: "SURVIVED", 1: "killed"}.get(rc, "ERROR")
                rows.append((m, status, seconds, "" if status == "killed" else out.strip().splitlines()[-1:]))
                if args.verbose or status == "ERROR":
                    print(out)
            shutil.rmtree(copy)
            m_, status, seconds, note = rows[-1]
            print(f"{status:9} {seconds:6.1f} s  {m.name}" + (f"  -- {note}" if note else ""), flush=True)
    width = max(len(m.name) for m, *_ in rows)
    print(f"\n| mutation{' ' * (width - 8)} | result   | tests (s) |\n|{'-' * (width + 2)}|----------|----------:|")
    for m, status, seconds, _ in rows:
        print(f"| {m.name.ljust(width)} | {status:8} | {seconds:9.1f} |")
        failed |= status != "killed"
    killed = sum(status == "killed" for _, status, *_ in rows)
    print(f"\n{killed} of {len(rows)} killed in {time.perf_counter() - start:.0f} s")
    for m, status, _, note in rows:
        if status == "STALE":
            print(f"STALE: {m.name}: {note} -- the code moved: re-anchor this mutation in {Path(__file__).name}",
                  file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
