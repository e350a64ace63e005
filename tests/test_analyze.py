import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import analyze
from lab import curves
import data
from lab import frontier
from lab import metrics, report, scratchpad, study
from lab import run_logs
from conftest import addition_only
from model import GPT, GPTConfig, save_checkpoint

RL_DEFAULTS = analyze.RL_DEFAULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@addition_only
def test_describe_error_is_none_for_the_exact_scratchpad():
    assert scratchpad.describe_error(data.scratchpad(12345678, 87654321), 12345678, 87654321) is None


@addition_only
def test_describe_error_finds_an_early_closed_operand_list():
    a, b = 12345678, 87654321
    truth = data.scratchpad(a, b)
    wrong = truth.replace("[1,2,3,4,5,6,7,8]", "[1,2,3,4,5,6,7]", 1)
    e = scratchpad.describe_error(wrong, a, b)
    assert e["line"] == 1 and e["field"] == "operand 1" and e["index"] == 7
    assert e["expected"] == "," and e["wrote"] == "]"
    assert e["kind"] == "closed the list too early (']' for ',')"


@addition_only
def test_describe_error_finds_a_skipped_digit_on_line_two_of_the_second_operand():
    a, b = 12345678, 87654321
    truth = data.scratchpad(a, b)
    line2 = truth.splitlines()[3]
    assert line2.startswith("[1,2,3,4,5,6,7] + [8,7,6,5,4,3,2]")
    wrong = truth.replace(line2, line2.replace("[8,7,6,5,4,3,2]", "[8,7,6,4,3,2]"))
    e = scratchpad.describe_error(wrong, a, b)
    assert (e["line"], e["field"], e["index"], e["kind"]) == (2, "operand 2", 3, "skipped a digit")


@addition_only
def test_describe_error_in_a_sum_and_in_a_truncated_text():
    truth = data.scratchpad(19, 3)
    assert scratchpad.describe_error(truth.replace("9+3+0=12", "9+3+0=11"), 19, 3)["field"] == "digit sum"
    assert scratchpad.describe_error(truth.replace("9+3+0=12", "9+4+0=13"), 19, 3)["field"] == "sum operands"
    assert scratchpad.describe_error(truth.replace("C->1\n", "C->0\n"), 19, 3)["field"] == "new carry"
    assert scratchpad.describe_error(truth.replace("A=[2] , C=1", "A=[2] , C=0"), 19, 3)["field"] == "carry"
    assert scratchpad.describe_error(truth[:20], 19, 3)["wrote"] == "(end)"


def test_wilson_interval():
    low, high = metrics.wilson_interval(50, 100)
    assert low < 50 < high and abs((low + high) / 2 - 50) < 1e-9
    assert metrics.wilson_interval(0, 1000)[0] == 0.0 and metrics.wilson_interval(1000, 1000)[1] == 100.0


@pytest.mark.parametrize("command", [["accuracy", "--extra", "1"],
                                     pytest.param(["errors"], marks=addition_only)])
def test_subcommands_run(tiny_checkpoint, tmp_path, command):
    if command[0] == "accuracy":
        command = command + ["--cache", str(tmp_path / "cache.jsonl")]
    r = subprocess.run([sys.executable, "analyze.py", *command, "--ckpt", tiny_checkpoint, "--n", "5",
                        "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if command[0] == "accuracy":
        assert "| identical | 2 |" in r.stdout and (tmp_path / "accuracy.csv").exists()
        # Tables 4 and 5: one row per checkpoint, a cell (accuracy and interval) per K = N, N+1
        cell = r"\d+\.\d \(\d+\.\d-\d+\.\d\)"
        row = rf"\| \S+ \| {cell} \| {cell} \|"
        wide = [line for line in r.stdout.splitlines() if re.fullmatch(row, line)]
        assert len(wide) == 2 and "Table 4 (identical" in r.stdout and "Table 5 (varying" in r.stdout
        assert "--extra 1 --n 5`" in (tmp_path / "accuracy.md").read_text().splitlines()[0]
        assert (tmp_path / "accuracy.png").stat().st_size > 1000  # Fig. 2
        # a rerun reads every cell from the cache the first run wrote, and prints the same tables
        again = subprocess.run(r.args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.stdout == r.stdout and again.stderr.count("(cached)") == 4, again.stderr
    else:
        assert "3-digit operands, greedy accuracy" in r.stdout


def test_mean_ci_matches_a_hand_computed_t_interval():
    mean, half = metrics.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), t(0.975, 4 df) = 2.776
    assert mean == pytest.approx(3.0) and half == pytest.approx(2.776 * (2.5 ** 0.5) / 5 ** 0.5, rel=1e-4)
    mean, half = metrics.mean_ci([7.0])
    assert mean == 7.0 and math.isnan(half)  # one seed: no interval, and the table says so
    assert curves.plus_minus(mean, half) == "7.0 (1 seed)"


def test_area_under_curve_is_the_time_average():
    rows = [{"episode": 0, "acc_plus": 0.0}, {"episode": 100, "acc_plus": 100.0},
            {"episode": 300, "acc_plus": 100.0}]
    assert curves.area_under_curve(rows) == pytest.approx((50 * 100 + 100 * 200) / 300)


def _fake_run(root, name, alpha, seed, final, kl_coef=10.0, kl=0.001, episodes=512, **config):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"alpha": alpha, "kl_coef": kl_coef, "seed": seed,
                                                 "name": name, "episodes": 512, **config}))
    rows = [{"episode": e, "acc_plus": acc, "acc_comfort": 100.0, "critical_p": 0.9, "kl": kl}
            for e, acc in ((0, 50.0), (256, (50.0 + final) / 2), (512, final)) if e <= episodes]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_checkpoint_is_its_file_name(tmp_path):
    """Runs started from another folder name their checkpoint by a full path: the label shows the file, and
    two seeds that name one file differently are one group."""
    _fake_run(tmp_path, "add6", 0.0, 0, 70.0, ckpt="/somewhere/checkpoints/add6.pt")
    _fake_run(tmp_path, "add8", 0.0, 0, 80.0, ckpt="/somewhere/checkpoints/add8.pt")
    _fake_run(tmp_path, "add8_s1", 0.0, 1, 90.0, ckpt="checkpoints/add8.pt")
    groups = curves.group_runs(run_logs.find_runs([str(tmp_path)]), RL_DEFAULTS)
    assert [(label, len(runs)) for label, _, runs in groups] == [("ckpt=add6.pt", 1), ("ckpt=add8.pt", 2)]


def test_runs_are_grouped_by_the_precision_they_generated_in(tmp_path):
    """A run from before rl.py recorded its precisions generated in bfloat16: it groups with one made with
    --dtype bfloat16, apart from one that generated in float32."""
    _fake_run(tmp_path, "before", 0.0, 0, 70.0)
    _fake_run(tmp_path, "pinned", 0.0, 1, 70.0, dtype="bfloat16", training_dtype="bfloat16",
              generation_dtype="bfloat16")
    _fake_run(tmp_path, "auto", 0.0, 2, 70.0, dtype="auto", training_dtype="bfloat16",
              generation_dtype="float32")
    groups = curves.group_runs(run_logs.find_runs([str(tmp_path)]), RL_DEFAULTS)
    names = {label: [run["config"]["name"] for run in members] for label, _, members in groups}
    assert names == {"generation_dtype=bfloat16": ["before", "pinned"], "generation_dtype=float32": ["auto"]}


def test_runs_on_other_machines_group_together_and_the_table_says_where_each_ran(tmp_path):
    here = {"commit": "abc1234", "threads": 1, "machine": "AMD EPYC (2 cores)", "torch": "2.13.0"}
    # --dtype auto trains in bfloat16 where the CPU has it natively, else in float32: a rounding difference
    # like the machine's, so it does not split the group either, and the table says which ran how
    _fake_run(tmp_path, "epyc", 0.0, 0, 70.0, provenance=here, training_dtype="bfloat16")
    _fake_run(tmp_path, "xeon", 0.0, 1, 80.0, provenance={**here, "machine": "Intel Xeon (2 cores)"},
              training_dtype="float32")
    _fake_run(tmp_path, "old", 0.0, 2, 90.0)
    groups = curves.group_runs(run_logs.find_runs([str(tmp_path)]), RL_DEFAULTS)
    assert len(groups) == 1 and len(groups[0][2]) == 3  # neither the machine nor the precision is a setting
    line = curves.made_on(groups[0][2])
    epyc = "AMD EPYC (2 cores), 1 thread(s), torch 2.13.0, code abc1234, training in bfloat16: 1 run(s)"
    assert epyc in line
    assert "Intel Xeon (2 cores), 1 thread(s), torch 2.13.0, code abc1234, training in float32" in line
    assert "not recorded" in line


def test_curves_groups_seeds_and_writes_table_and_figure(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, final in enumerate([70.0, 80.0]):
        _fake_run(runs, f"a0_s{seed}", 0.0, seed, final)
        _fake_run(runs, f"a30_s{seed}", 30.0, seed, final + 10)
    (runs / "empty").mkdir()  # a run that never logged is skipped, not an error
    groups = curves.group_runs(run_logs.find_runs([str(runs)]), RL_DEFAULTS)
    assert [(label, len(members)) for label, _, members in groups] == [("alpha=0.0", 2), ("alpha=30.0", 2)]
    out = subprocess.run([sys.executable, "analyze.py", "curves", str(runs), "--name", "fig", "--results",
                          str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| alpha=30.0 | 2 | 512 | 50.0 | 85.0 +- " in out.stdout
    assert (tmp_path / "res" / "fig.png").stat().st_size > 1000 and (tmp_path / "res" / "fig.md").exists()


def test_runs_measured_differently_or_cut_off_are_not_averaged_in(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    _fake_run(runs, "s0", 0.0, 0, 70.0, eval_size=200)
    _fake_run(runs, "s1", 0.0, 1, 80.0, eval_size=200)
    _fake_run(runs, "small_eval", 0.0, 2, 90.0, eval_size=50)  # another evaluation set size: its own group
    _fake_run(runs, "cut", 0.0, 3, 10.0, eval_size=200, episodes=256)  # stopped at 256 of 512 episodes
    table = curves.summarize(curves.group_runs(run_logs.find_runs([str(runs)]), RL_DEFAULTS))
    assert [(r["group"], r["seeds"], r["unfinished"], r["final"]) for r in table] == \
        [("eval_size=50", 1, 0, 90.0), ("eval_size=200", 2, 1, 75.0)]
    out = subprocess.run([sys.executable, "analyze.py", "curves", str(runs), "--results", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "(not finished)" in out.stdout and "cut" in out.stdout


def test_paired_differences_pair_runs_by_seed_and_skip_seeds_without_a_partner(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, standard, prioritized in ((0, 70.0, 75.0), (1, 80.0, 86.0), (2, 90.0, 93.0)):
        _fake_run(runs, f"std_s{seed}", 0.0, seed, standard)
        _fake_run(runs, f"prio_s{seed}", 100.0, seed, prioritized)
    _fake_run(runs, "prio_s3", 100.0, 3, 10.0)  # no standard run of seed 3: not a pair
    command = [sys.executable, "analyze.py", "curves", str(runs), "--results", str(tmp_path / "res")]
    out = subprocess.run(command + ["--baseline", "alpha=0,kl_coef=10"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    # differences 5, 6, 3: mean 4.67, sd 1.53, t(2) = 4.303 -> half-width 3.80; logs without the KL split: n/a
    assert "| alpha=100.0 | 3 | 4.7 +- 3.8 | " in out.stdout and out.stdout.rstrip().count("n/a") >= 2
    assert "--baseline alpha=0,kl_coef=10`" in (tmp_path / "res" / "curves.md").read_text().splitlines()[0]
    out = subprocess.run(command + ["--baseline", "alpha=3"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "matches 0 groups" in out.stderr and "Traceback" not in out.stderr


def test_damage_is_a_comfort_loss_a_fall_below_the_start_or_a_non_finite_value():
    run = lambda comfort, plus, kl=0.001: {"rows": [{"episode": 0, "acc_plus": 60.0, "acc_comfort": 100.0},
                                                    {"episode": 512, "acc_plus": plus, "acc_comfort": comfort,
                                                     "kl": kl}]}
    assert not curves.damaged(run(96.0, 80.0))
    assert curves.damaged(run(95.0, 80.0)) and curves.damaged(run(100.0, 59.5))
    assert curves.damaged(run(100.0, 80.0, kl=float("nan")))
    # the add5 plans' damage is the comfort zone's alone: a fall of the N+k accuracy is not damage there
    assert frontier.comfort_lost(run(95.0, 80.0)) and not frontier.comfort_lost(run(100.0, 59.5))


def test_frontier_says_which_prioritized_runs_lie_above_the_uniform_frontier(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in range(2):
        _fake_run(runs, f"none_s{seed}", 0.0, seed, 95.0 + seed, kl_coef=0.0, kl=0.004)
        _fake_run(runs, f"std_s{seed}", 0.0, seed, 75.0 + seed, kl=0.002)
        _fake_run(runs, f"prio_s{seed}", 100.0, seed, 90.0 + seed, kl=0.002)  # above: no uniform >= at <= KL
        _fake_run(runs, f"weak_s{seed}", 3.0, seed, 70.0 + seed, kl=0.003)  # below: std is better at less KL
    table = frontier.mark_uniform(curves.summarize(curves.group_runs(run_logs.find_runs([str(runs)]),
                                                                      RL_DEFAULTS)), analyze.is_uniform)
    verdict = {r["group"]: [u["group"] for u in frontier.beaten_by(r, table)] for r in table
               if not analyze.is_uniform(r["settings"])}
    assert verdict == {"alpha=100.0, kl_coef=10.0": [],
                       "alpha=3.0, kl_coef=10.0": ["alpha=0.0, kl_coef=10.0"]}
    assert "alpha=0.0, kl_coef=0.0 (no penalty: alpha unused)" in [r["group"] for r in table]
    out = subprocess.run([sys.executable, "analyze.py", "frontier", str(runs), "--name", "fr", "--results",
                          str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| alpha=100.0, kl_coef=10.0 | prioritized | 2 | 0.0020 +- 0.0000 | 90.5 +- " in out.stdout
    assert "none: above the frontier" in out.stdout and (tmp_path / "res" / "fr.png").stat().st_size > 1000


def test_the_frontier_compares_only_runs_of_the_same_checkpoint_and_lr(tmp_path):
    """A prioritized group is set against uniform runs of its own checkpoint, lr and settings only: one at
    another lr has no frontier (said in a warning and in the table, never "yes, above"), and a uniform run of
    another checkpoint that would beat it is not counted against it."""
    runs = tmp_path / "runs"
    runs.mkdir()
    _fake_run(runs, "std", 0.0, 0, 95.0, kl=0.001, lr=1e-4)
    _fake_run(runs, "prio", 100.0, 0, 90.0, kl=0.002, lr=1e-4)
    _fake_run(runs, "prio_fast", 100.0, 0, 90.0, kl=0.002, lr=3e-4)
    _fake_run(runs, "other_model", 0.0, 0, 99.0, kl=0.001, lr=3e-4, ckpt="checkpoints/add5.pt")
    out = subprocess.run([sys.executable, "analyze.py", "frontier", str(runs), "--name", "fr", "--results",
                          str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    short = out.stdout.split("In full:")[0].splitlines()
    verdict = lambda label: next(line for line in short if line.startswith(f"| {label} |")).split(" | ")[-1]
    assert verdict("alpha=100.0, ckpt=add7.pt, lr=0.0003") == "no frontier |"
    assert verdict("alpha=100.0, ckpt=add7.pt, lr=0.0001") == "no |"  # std beats it at the same lr
    assert "| no comparable uniform run: not compared |" in out.stdout
    assert "warning: no uniform run shares the checkpoint, lr and other settings of" in out.stderr
    assert "lr=0.0003" in out.stderr.split("warning: no uniform run")[1]


def _train_log(run_dir, splits):
    """A train.jsonl: one iteration per (episode, share_uncertain, kl_uncertain, kl_certain)."""
    rows = [{"episode": e, "share_uncertain": s, "kl_uncertain": u, "kl_certain": c, "kl_weight": 0.5}
            for e, s, u, c in splits]
    (run_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_exact_kl_comes_from_the_split_and_can_reorder_the_frontier(tmp_path):
    """The exact KL of an iteration is share * KL where unsure + (1 - share) * KL where sure; "final" averages
    the iterations after the evaluation before the last. A prioritized run that pays little k2 KL but much
    exact KL is above the k2 frontier and below the exact one."""
    runs = tmp_path / "runs"
    runs.mkdir()
    _fake_run(runs, "std", 0.0, 0, 92.0, kl=0.003)
    _fake_run(runs, "prio", 100.0, 0, 90.0, kl=0.002)
    _fake_run(runs, "old", 0.0, 0, 85.0, kl_coef=1.0, kl=0.001)  # from before the split: no exact KL
    _train_log(runs / "std", [(128, 0.1, 0.5, 0.0), (384, 0.1, 0.2, 0.0)])  # exact 0.05, then 0.02
    _train_log(runs / "prio", [(128, 0.5, 0.1, 0.1), (384, 0.5, 0.5, 0.1)])  # exact 0.1, then 0.3
    table = frontier.mark_uniform(curves.summarize(curves.group_runs(run_logs.find_runs([str(runs)]),
                                                                      RL_DEFAULTS)), analyze.is_uniform)
    row = {r["settings"]["alpha"]: r for r in table if r["settings"]["kl_coef"] == 10.0}
    assert row[0.0]["exact_kl"] == pytest.approx(0.02) and row[0.0]["exact_kl_train"] == pytest.approx(0.035)
    assert row[100.0]["exact_kl"] == pytest.approx(0.3) and row[100.0]["kl_weight_train"] == 0.5
    assert math.isnan([r for r in table if r["settings"]["kl_coef"] == 1.0][0]["exact_kl"])
    assert frontier.beaten_by(row[100.0], table, "kl") == []  # no uniform group is >= at <= k2 KL
    assert [u["settings"]["kl_coef"] for u in frontier.beaten_by(row[100.0], table, "exact_kl")] == [10.0]
    out = subprocess.run([sys.executable, "analyze.py", "frontier", str(runs), "--name", "fr", "--results",
                          str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| prioritized | 1 of 1 | 0.30000 (1 seed) | 0.0020 (1 seed) | 90.0 (1 seed) | alpha" in out.stdout
    assert (tmp_path / "res" / "fr_exact.png").stat().st_size > 1000


def test_a_prioritized_run_is_measured_against_the_uniform_runs_of_its_seed_in_log_kl(tmp_path):
    """Seed 0: uniform kl_coef 1 at exact KL 0.01 (area 55) and 0.1 at 0.04 (area 65); the prioritized run at
    0.02 lies half-way in log KL, where the frontier is 60: its area 63 is +3.0. Seed 1's prioritized run, at
    0.005, lies outside the uniform range, log(2) = 0.69 below kl_coef 1: not interpolated, and said so."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, prioritized_kl in ((0, 0.02), (1, 0.005)):  # area (mean over 3 evaluations) = 25 + final / 2
        for name, alpha, kl_coef, final, kl in (("stiff", 0.0, 1.0, 60.0, 0.01),
                                                ("loose", 0.0, 0.1, 80.0, 0.04),
                                                ("prio", 100.0, 10.0, 76.0, prioritized_kl)):
            _fake_run(runs, f"{name}_s{seed}", alpha, seed, final, kl_coef=kl_coef)
            _train_log(runs / f"{name}_s{seed}", [(128, 1.0, kl, 0.0), (384, 1.0, kl, 0.0)])
    uniform = [run for run in run_logs.find_runs([str(runs)]) if run["config"]["alpha"] == 0.0
               and run["config"]["seed"] == 0]
    assert frontier.frontier_at(uniform, 0.02, "auc_mean") == (pytest.approx(60.0), "kl_coef 1-0.1")
    outside = "outside: 0.69 above kl_coef 0.1 in log KL"
    assert frontier.frontier_at(uniform, 0.08, "auc_mean") == (None, outside)
    out = subprocess.run([sys.executable, "analyze.py", "frontier", str(runs), "--name", "fr", "--results",
                          str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| alpha=100.0, kl_coef=10.0 | 0 | 0.02000 | kl_coef 1-0.1 | +3.0 | +0.0 |" in out.stdout
    assert "| 1 | 0.00500 | outside: 0.69 below kl_coef 1 in log KL | n/a | n/a |" in out.stdout
    assert "| 1 of 2 | 3.0 (1 seed) | n/a |" in out.stdout
    assert "alpha=100.0, kl_coef=10.0 0 of 2" in out.stdout
    # the area figure's points: each group's training-mean exact KL and area over its two seeds (equal here)
    assert "| alpha=0.0, kl_coef=0.1 | uniform | 2 | 0.04000 +- 0.00000 | 65.0 +- 0.0 |" in out.stdout


def test_the_frontier_says_each_groups_regime_and_pairs_prioritized_with_standard_at_its_kl_coef(tmp_path):
    """Two seeds of the standard penalty and of alpha 100 at kl_coef 10. The regime table pools every
    iteration: alpha 100's norms 0.5, 2, 3, 4 have median 2.5 and 3 of 4 above the clip 1.0; its rewards
    average 0.25 (seed 0) and 0.75 (seed 1). The matched-coefficient table pairs the two by seed: alpha 100's
    areas are 5 and 10 points above (final +10 and +20, the area being 25 + final / 2)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    logs = {("std", 0): [(0.1, 0.0, 0.5), (0.2, 0.5, 0.5)], ("std", 1): [(0.3, 1.0, 0.4), (0.4, 1.0, 0.6)],
            ("prio", 0): [(0.5, 0.0, 0.2), (2.0, 0.5, 0.4)], ("prio", 1): [(3.0, 0.5, 0.2), (4.0, 1.0, 0.4)]}
    for (name, seed), iterations in logs.items():
        alpha, final = (0.0, 60.0 + 10 * seed) if name == "std" else (100.0, 70.0 + 20 * seed)
        _fake_run(runs, f"{name}_s{seed}", alpha, seed, final, grad_clip=1.0)
        rows = [{"episode": 128 * (i + 1), "share_uncertain": 1.0, "kl_uncertain": 0.01, "kl_certain": 0.0,
                 "kl_weight": 0.9 if alpha else 1.0, "grad_norm": norm, "reward": reward, "kl_critical": 0.2,
                 "weight_critical": weight if alpha else 1.0}
                for i, (norm, reward, weight) in enumerate(iterations)]
        (runs / f"{name}_s{seed}" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, "analyze.py", "frontier", str(runs), "--name", "fr", "--results",
                          str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ("| alpha=100.0 | 2 | 2.500 (75%) | 0.500 +- 3.176 | 0.2000 +- 0.0000 | 0.9000 / 0.3000 | "
            "0.900 +- 0.000 | 0 of 2 |") in out.stdout
    assert "| alpha=0.0 | 2 | 0.250 (0%) | 0.625 +- 4.765 |" in out.stdout
    assert "| alpha=100.0 | 2 | 7.5 +- 31.8 | 35.2 | 0.0 +- 0.0 | 0.0 |" in out.stdout
    assert (tmp_path / "res" / "fr_area.png").stat().st_size > 1000


@pytest.mark.parametrize("line, message", [("{not json", "line 2 is not JSON"),
                                           ('{"episode": 512}', "line 2 lacks acc_plus, acc_comfort"),
                                           ('{"episode": 0, "acc_plus": 50.0, "acc_comfort": 100.0}',
                                            "line 2: episode 0 after episode 0 (rows duplicated"),
                                           ('{"episode": 512, "acc_plus": NaN, "acc_comfort": 100.0}',
                                            "line 2 holds a value that is not a finite number")])
def test_a_damaged_log_is_an_error_that_names_the_file_and_line(tmp_path, line, message):
    runs = tmp_path / "runs"
    runs.mkdir()
    _fake_run(runs, "good", 0.0, 0, 80.0)
    _fake_run(runs, "bad", 0.0, 1, 80.0, episodes=0)
    with open(runs / "bad" / "metrics.jsonl", "a") as f:
        f.write(line + "\n")
    out = subprocess.run([sys.executable, "analyze.py", "curves", str(runs), "--results", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and message in out.stderr and "bad" in out.stderr
    assert "Traceback" not in out.stderr


def test_training_rows_not_finite_or_out_of_order_are_left_out_and_named(tmp_path):
    rows = ['{"iteration": 1, "kl": 0.5}', '{"iteration": 2, "kl": NaN}', '{"iteration": 2, "kl": 0.25}',
            '{"iteration": 1, "kl": 0.5}', '{"iteration": 3, "kl": 0.125}']
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    run = {"dir": str(tmp_path)}
    assert [r["kl"] for r in run_logs.train_rows(run)] == [0.5, 0.25, 0.125]
    assert [note.split("train.jsonl ")[1] for note in run["notes"]] == [
        "line 2 (not a finite number: kl nan; skipped)",
        "line 4 (iteration 1 after 2: duplicated or out of order; skipped)"]


def test_the_critical_commas_table_averages_each_comma_over_seeds_and_only_where_it_was_logged(tmp_path):
    _fake_run(tmp_path, "old", 0.0, 0, 60.0)  # a run from before the commas were logged: no table
    table = lambda: curves.summarize(curves.group_runs(run_logs.find_runs([str(tmp_path)]),
                                                       RL_DEFAULTS))
    assert curves.comma_lines(table()) == []
    for seed, (p, kl) in enumerate([(0.6, 0.1), (0.8, 0.3)], start=1):
        _fake_run(tmp_path, f"new{seed}", 0.0, seed, 60.0)
        path = tmp_path / f"new{seed}" / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            row.update({key: (0.2 if row["episode"] == 0 else p) for key in curves.COMMAS},
                       kl_critical=None if row["episode"] == 0 else kl, weight_critical=0.5)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = curves.comma_lines(table())
    body = [line for line in lines if line.startswith("| alpha") or line.startswith("| all")]
    assert len(body) == 1 and body[0].count("0.200 -> 0.700 +- ") == 6  # 3 runs: the old one counts no value
    assert "| 0.2000 +- " in body[0] and body[0].endswith("| 0.5000 +- 0.0000 |")


def test_curves_without_runs_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "analyze.py", "curves", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: no rl.py runs")
    assert len(out.stderr.strip().splitlines()) == 1


class Scripted(torch.nn.Module):
    """A model that writes the correct scratchpad with certainty, except at one offset where it hesitates
    between the right character and `alternative`; once its text has gone wrong it ends with a wrong
    answer."""

    def __init__(self, offset, alternative):
        super().__init__()
        self.offset, self.alternative = offset, alternative
        self.config = GPTConfig(block_size=1024, n_layer=1, n_head=1, n_embd=8)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @staticmethod
    def _problem(text):
        a, b = text.split("\n")[1].split("+")
        return int(a), int(b)

    def forward(self, idx, targets=None):
        logits = torch.full((*idx.shape, len(data.VOCAB)), -1e4)
        for i, row in enumerate(idx.tolist()):
            a, b = self._problem(data.decode(row))
            full = data.prompt((a, b)) + data.scratchpad(a, b)
            for t in range(min(len(row), len(full) - 1)):
                logits[i, t, data.STOI[full[t + 1]]] = 0.0
            hesitate = len(data.prompt((a, b))) - 1 + self.offset
            logits[i, hesitate, data.STOI[self.alternative]] = 0.0
        return logits, None

    def generate(self, idx, max_new_tokens, temperature=0.0, generator=None, fast=True, stop=None,
                 draft=None):
        rows = []
        for row in idx.tolist():
            text = data.decode(row)
            a, b = self._problem(text)
            done, truth = text[len(data.prompt((a, b))):], data.scratchpad(a, b)
            rest = truth[len(done):] if truth.startswith(done) else "\n</scratch>\n0\n"
            rows.append(data.encode(rest[:max_new_tokens]))
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [data.PAD_ID] * (width - len(r)) for r in rows])
        return torch.cat([idx, new], 1)


@addition_only
def test_probe_finds_the_one_hesitant_decisive_token():
    problems = [(1234, 5678), (4321, 8765)]
    offset = data.critical_positions((1234, 5678), 3)[0]  # the n+1 comma of line 1, operand 1, in both
    model = Scripted(offset, "]")
    greedy = metrics.solve(model, problems, "cpu", None)
    tested, certainty = analyze.probe(model, 3, problems, greedy, "cpu", None, controls=3, samples=8)
    critical = [r for r in tested if r["critical"]]
    assert [(r["problem"], r["t"]) for r in critical] == [(p, offset) for p in problems]
    hit = critical[0]
    assert hit["wrote"] == "]" and "paper" in hit["why"]
    assert (hit["line"], hit["field"], hit["index"]) == (1, "operand 1", 3)
    assert (hit["right_wins"], hit["wrong_wins"]) == (8, 0)
    # two equally likely characters: J = 1 - log 2 / log |V|, against about 1 on every other token
    assert hit["J"] == pytest.approx(1 - math.log(2) / math.log(len(data.VOCAB)), abs=1e-3)
    randoms = [r for r in tested if "random" in r["why"]]
    assert len(randoms) == 6 and {r["t"] for r in randoms} != {offset}
    # the baseline: this model fails after any wrong character, so every random place is decisive too;
    # what sets the critical token apart is its certainty alone
    assert all(r["decisive"] and not r["critical"] for r in randoms if r["t"] != offset)
    rows = {r["positions"]: r for r in analyze.table1(tested, certainty, drop=0.05)}
    # greedy decoding writes the right character there (a tie goes to ','): not a first error
    selected = rows["low certainty and decisive, first errors apart (selected by Delta J)"]
    assert selected["n"] == 2 and selected["mean"] == pytest.approx(hit["delta"], abs=1e-3)
    assert selected["below"] == 1 and rows["first wrong character of failed greedy texts"]["n"] == 0
    controls = [r for r in tested if "matched" in r["why"]]  # one per tested low-certainty token
    assert len(controls) == 2 and all((r["line"], r["field"]) == (1, "operand 1") for r in controls)
    assert rows["the paper's n+1 comma, lines 1-3 (fixed places)"]["n"] == 2 * 2 * 3  # 2 operands x 3 lines
    assert abs(rows["every token of the texts"]["mean"]) < 0.01


def test_decisiveness_needs_a_gap_with_intervals():
    """A token is decisive only when the right character's wins and the wrong one's are 95% intervals
    apart."""
    assert analyze.decisive(8, 0, 8) and analyze.decisive(7, 1, 8) and analyze.decisive(40, 25, 50)
    assert not analyze.decisive(6, 2, 8) and not analyze.decisive(8, 4, 8) and not analyze.decisive(0, 0, 8)
    assert not analyze.decisive(1, 8, 8)  # the wrong character doing better is not decisive either


@addition_only
def test_probe_subcommand_writes_table_and_figure(tiny_checkpoint, tmp_path):
    r = subprocess.run([sys.executable, "analyze.py", "probe", "--ckpt", tiny_checkpoint, "--n", "3",
                        "--controls", "2", "--results", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Table 1" in r.stdout and (tmp_path / "probe.md").exists()


@addition_only
def test_study_runs_every_step_and_resumes(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    ckpt = str(tmp_path / "add2.pt")
    save_checkpoint(ckpt, GPT(GPTConfig(block_size=512, n_layer=1, n_head=2, n_embd=16)), args={"digits": 2})
    monkeypatch.setattr(study, "CHECKPOINTS", [ckpt])
    monkeypatch.setattr(study, "BUDGETS", {"small": {
        "n": 4, "probe_n": 2, "episodes": 4, "eval_every": 4, "seeds": 2, "alphas": [0, 100],
        "alpha_seeds": 1, "pretraining_seeds": 1, "pretraining_plus": 2,
        "rl_flags": ["--batch-size", "2", "--group-size", "2", "--eval-size", "4"]}})
    args = analyze.argparse.Namespace(budget="small", runs=str(tmp_path / "runs"),
                                      results=str(tmp_path / "res"), device="cpu", jobs=2,
                                      print_commands=False)
    study.cmd_study(args, RL_DEFAULTS)
    res = tmp_path / "res" / "study_small"
    for name in ("accuracy.md", "probe.md", "fig4.md", "fig6.md", "fig3.png"):
        assert (res / name).exists(), name
    assert "| alpha=100.0 | 2 |" in (res / "fig4.md").read_text()  # 2 seeds
    runs = sorted(os.listdir(tmp_path / "runs" / "study_small" / "alpha"))
    assert runs == ["alpha0_seed0", "alpha0_seed1", "alpha100_seed0", "alpha100_seed1"]
    run_dir = tmp_path / "runs" / "study_small" / "alpha" / "alpha0_seed0"
    assert not (run_dir / "model.pt").exists()  # logs only
    capsys.readouterr()
    study.cmd_study(args, RL_DEFAULTS)  # everything is there: no run again
    assert "$ rl.py" not in capsys.readouterr().err
    study.cmd_study(analyze.argparse.Namespace(**{**vars(args), "print_commands": True}), RL_DEFAULTS)
    printed = capsys.readouterr()  # no command for a finished run: its --force would replace it
    finished = tmp_path / "runs" / "study_small" / "alpha"
    assert printed.out == "" and f"have {finished}/alpha0_seed0" in printed.err


def test_runs_side_by_side_log_what_runs_one_by_one_log(tiny_checkpoint, tmp_path):
    budget = {"episodes": 4, "eval_every": 2, "rl_flags": ["--batch-size", "1", "--group-size", "2",
                                                           "--eval-size", "2",
                                                         "--ckpt", tiny_checkpoint, "--device", "cpu"]}
    logs = {}
    for jobs in (1, 2):
        runs = [(str(tmp_path / f"jobs{jobs}"), f"alpha{a}", ["--alpha", str(a)]) for a in (0, 100)]
        study.run_rl(runs, budget, jobs)
        for out, name, _ in runs:
            rows = run_logs.read_run(os.path.join(out, name))["rows"]
            logs[jobs, name] = [{k: v for k, v in row.items() if k != "minutes"} for row in rows]
    assert logs[1, "alpha0"] == logs[2, "alpha0"] and logs[1, "alpha100"] == logs[2, "alpha100"]
    assert [row["episode"] for row in logs[2, "alpha0"]] == [0, 2, 4]


def test_ansi_rendering_keeps_every_character_and_marks_the_unsure_one():
    out = report.ansi_certainty("[1,2]\n", [1.0, 1.0, 0.5, 1.0, 1.0, 1.0], low=0.5)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert plain == "[1,2]\u21b5\n"
    black = "\x1b[38;2;0;0;0m"
    # red at J = low, white at 1
    assert f"48;2;255;80;80m{black}," in out and f"48;2;255;255;255m{black}[" in out


@addition_only
def test_a_low_certainty_token_gets_a_control_on_its_own_line_and_field():
    """A model unsure at one digit copy that it still writes right: that token is low-certainty without
    being a first error, and its control is another digit of the same operand list on the same line."""
    problems = [(1234, 5678)]
    offset = data.scratchpad(1234, 5678).index("[1,2,3,4]") + 3  # the '2' of line 1, operand 1
    model = Scripted(offset, "7")
    greedy = [data.scratchpad(*p) for p in problems]  # right everywhere: no first error
    tested, _ = analyze.probe(model, 3, problems, greedy, "cpu", None, controls=0, samples=2)
    low = [r for r in tested if r["low"]]
    matched = [r for r in tested if "matched" in r["why"]]
    assert [r["t"] for r in low] == [offset] and len(matched) == 1 and matched[0]["t"] != offset
    assert (matched[0]["line"], matched[0]["field"]) == (low[0]["line"], low[0]["field"]) == (1, "operand 1")
    assert matched[0]["decisive"] is not None  # tested, as its low-certainty token is


def test_runs_from_two_files_of_one_name_never_pool_and_every_run_left_out_is_named(tmp_path, capsys):
    """Two references that share a file name (other SHA-256) are two groups; a run that logged nothing and a
    damaged line of a training log are named under "Left out", never dropped or pooled silently."""
    _fake_run(tmp_path, "a", 0.0, 0, 70.0, ckpt="x/add7.pt", ckpt_sha256="a" * 64)
    _fake_run(tmp_path, "b", 0.0, 1, 80.0, ckpt="y/add7.pt", ckpt_sha256="b" * 64)
    _fake_run(tmp_path, "c", 0.0, 2, 90.0, ckpt="y/add7.pt", ckpt_sha256="b" * 64)
    _fake_run(tmp_path, "empty", 0.0, 3, 90.0, ckpt="y/add7.pt", ckpt_sha256="b" * 64)
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "c" / "train.jsonl").write_text('{"iteration": 1, "episode": 256}\n[1, 2]\n{"iter')
    groups, table, left_out = curves.load_groups([str(tmp_path)], RL_DEFAULTS)
    assert sorted((label, len(runs)) for label, _, runs in groups) == [
        ("ckpt=add7.pt (sha256 aaaaaaaaaaaa)", 1), ("ckpt=add7.pt (sha256 bbbbbbbbbbbb)", 2)]
    assert any("empty (nothing logged" in why for why in left_out)
    assert sorted(why.split("train.jsonl ")[1] for why in left_out if "train.jsonl" in why) == [
        "line 2 (not a row of the log: skipped)", "line 3 (not a row of the log: skipped)"]
    capsys.readouterr()
