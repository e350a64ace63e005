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
