import os
import subprocess
import sys

import pytest

import analyze
import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_first_error_is_none_for_the_exact_scratchpad():
    assert analyze.first_error(data.scratchpad(12345678, 87654321), 12345678, 87654321) is None


def test_first_error_finds_an_early_closed_operand_list():
    a, b = 12345678, 87654321
    truth = data.scratchpad(a, b)
    wrong = truth.replace("[1,2,3,4,5,6,7,8]", "[1,2,3,4,5,6,7]", 1)
    e = analyze.first_error(wrong, a, b)
    assert e["line"] == 1 and e["field"] == "operand 1" and e["index"] == 7
    assert e["expected"] == "," and e["wrote"] == "]"
    assert e["kind"] == "closed the list too early (']' for ',')"


def test_first_error_finds_a_skipped_digit_on_line_two_of_the_second_operand():
    a, b = 12345678, 87654321
    truth = data.scratchpad(a, b)
    line2 = truth.splitlines()[3]
    assert line2.startswith("[1,2,3,4,5,6,7] + [8,7,6,5,4,3,2]")
    wrong = truth.replace(line2, line2.replace("[8,7,6,5,4,3,2]", "[8,7,6,4,3,2]"))
    e = analyze.first_error(wrong, a, b)
    assert (e["line"], e["field"], e["index"], e["kind"]) == (2, "operand 2", 3, "skipped a digit")


def test_first_error_in_a_sum_and_in_a_truncated_text():
    truth = data.scratchpad(19, 3)
    assert analyze.first_error(truth.replace("9+3+0=12", "9+3+0=11"), 19, 3)["field"] == "digit sum"
    assert analyze.first_error(truth.replace("9+3+0=12", "9+4+0=13"), 19, 3)["field"] == "sum operands"
    assert analyze.first_error(truth.replace("C->1\n", "C->0\n"), 19, 3)["field"] == "new carry"
    assert analyze.first_error(truth.replace("A=[2] , C=1", "A=[2] , C=0"), 19, 3)["field"] == "carry"
    assert analyze.first_error(truth[:20], 19, 3)["wrote"] == "(end)"


def test_wilson_interval():
    low, high = analyze.wilson_interval(50, 100)
    assert low < 50 < high and abs((low + high) / 2 - 50) < 1e-9
    assert analyze.wilson_interval(0, 1000)[0] == 0.0 and analyze.wilson_interval(1000, 1000)[1] == 100.0


@pytest.mark.parametrize("command", [["accuracy", "--extra", "1"], ["errors"]])
def test_subcommands_run(tiny_checkpoint, tmp_path, command):
    r = subprocess.run([sys.executable, "analyze.py", *command, "--ckpt", tiny_checkpoint, "--n", "5",
                        "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if command[0] == "accuracy":
        assert "| identical | 2 |" in r.stdout and (tmp_path / "accuracy.csv").exists()
    else:
        assert "3+3 greedy accuracy" in r.stdout


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "analyze.py", "errors", "--ckpt", str(tmp_path / "nope.pt")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().startswith("error: no checkpoint") and "Traceback" not in r.stderr


def test_mean_ci_matches_a_hand_computed_t_interval():
    mean, half = analyze.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), t(0.975, 4 df) = 2.776
    assert mean == pytest.approx(3.0) and half == pytest.approx(2.776 * (2.5 ** 0.5) / 5 ** 0.5, rel=1e-4)
    assert analyze.mean_ci([7.0]) == (7.0, 0.0)


def test_area_under_curve_is_the_time_average():
    rows = [{"episode": 0, "acc_plus": 0.0}, {"episode": 100, "acc_plus": 100.0}, {"episode": 300, "acc_plus": 100.0}]
    assert analyze.area_under_curve(rows) == pytest.approx((50 * 100 + 100 * 200) / 300)


def _fake_run(root, name, alpha, seed, final):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(analyze.json.dumps({"alpha": alpha, "kl_coef": 10.0, "seed": seed, "name": name}))
    rows = [{"episode": e, "acc_plus": acc, "acc_comfort": 100.0, "critical_p": 0.9, "kl": 0.001}
            for e, acc in ((0, 50.0), (512, final))]
    (run / "metrics.jsonl").write_text("".join(analyze.json.dumps(r) + "\n" for r in rows))


def test_curves_groups_seeds_and_writes_table_and_figure(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, final in enumerate([70.0, 80.0]):
        _fake_run(runs, f"a0_s{seed}", 0.0, seed, final)
        _fake_run(runs, f"a30_s{seed}", 30.0, seed, final + 10)
    (runs / "empty").mkdir()  # a run that never logged is skipped, not an error
    groups = analyze.group_runs(analyze.find_runs([str(runs)]))
    assert [(label, len(members)) for label, _, members in groups] == [("alpha=0.0", 2), ("alpha=30.0", 2)]
    out = subprocess.run([sys.executable, "analyze.py", "curves", str(runs), "--name", "fig", "--results",
                          str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| alpha=30.0 | 2 | 512 | 50.0 | 85.0 +- " in out.stdout
    assert (tmp_path / "res" / "fig.png").stat().st_size > 1000 and (tmp_path / "res" / "fig.md").exists()


def test_curves_without_runs_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "analyze.py", "curves", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: no rl.py runs")
    assert len(out.stderr.strip().splitlines()) == 1
