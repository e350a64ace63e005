"""The third worked fork, done as a student would: data.py alone edited to teach subtraction (|a - b|, the
scratchpad borrowing instead of carrying), in a copy of the project; then pre-training, RL and the accuracy
table run end to end on a tiny model, and the copy's checkpoint says which task it holds. If this fails, a
script reaches past data.py's interface, or data.py's text moved and the edits below need updating."""
import os
import shutil
import subprocess
import sys

from conftest import addition_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (what data.py says, what the fork says instead): the whole fork
SUBTRACTION = [
    ('NAME = "addition"', 'NAME = "subtraction"'),
    ('return f"Input:\\n{a}+{b}\\nTarget:"', 'return f"Input:\\n{a}-{b}\\nTarget:"'),
    ("top, bottom, acc, carry = _digits(a), _digits(b), [], 0",
     "top, bottom, acc, carry = _digits(max(a, b)), _digits(min(a, b)), [], 0"),
    ("s = x + y + carry", "s = x - y - carry + 10  # s // 10 is 0 when this digit borrows"),
    ('f"{x}+{y}+{carry}={s} , A->{s % 10} , C->{s // 10}\\n")',
     'f"{x}-{y}-{carry}={s - 10} , A->{s % 10} , C->{1 - s // 10}\\n")'),
    ("carry = s // 10", "carry = 1 - s // 10"),
    ('answer_line(a + b) + "\\n"', 'answer_line(abs(a - b)) + "\\n"'),
    ("return float(parse_answer(completion) == a + b)",
     "return float(parse_answer(completion) == abs(a - b))"),
]


def fork(folder, edits):
    """A copy of the project's code in `folder` with data.py edited; returns the copy's path."""
    copy = os.path.join(folder, "project")
    skip = shutil.ignore_patterns(".git", "results", "runs", "__pycache__", "*.pt")
    shutil.copytree(ROOT, copy, ignore=skip)
    path = os.path.join(copy, "data.py")
    text = open(path).read()
    for old, new in edits:
        assert text.count(old) == 1, f"data.py no longer says {old!r}: update the fork in this test"
        text = text.replace(old, new)
    open(path, "w").write(text)
    return copy


def run(copy, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return done


@addition_only
def test_a_subtraction_fork_runs_pretraining_rl_and_accuracy(tmp_path):
    copy = fork(str(tmp_path), SUBTRACTION)
    check = ("import data; p = (301, 1234); t = data.target(p); "
             "assert data.reward(p, t) == 1.0 and t.endswith('\\n9 3 3\\n') and '4-1-0=3' in t, t; print(t)")
    run(copy, "-c", check)
    ckpt = os.path.join(copy, "sub2.pt")
    run(copy, "pretrain.py", "--digits", "2", "--steps", "30", "--n-layer", "1", "--n-embd", "16", "--n-head",
        "2", "--block-size", "256", "--eval-size", "2", "--eval-every", "30", "--threads", "1", "--out", ckpt)
    rl = run(copy, "rl.py", "--ckpt", ckpt, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "4", "--threads", "1", "--no-save", "--out", "runs",
             "--name", "sub")
    assert "done:" in rl.stdout and "Input: " in rl.stdout and "-" in rl.stdout.split("Input: ")[1][:20]
    table = run(copy, "analyze.py", "accuracy", "--ckpt", ckpt, "--n", "4", "--extra", "0", "--cache", "",
                "--out", "tables")
    assert "sub2.pt" in table.stdout
    refused = subprocess.run([sys.executable, "analyze.py", "accuracy", "--ckpt",
                              os.path.join(ROOT, "checkpoints", "add3.pt"), "--out", "tables"], cwd=copy,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "task 'addition'" in refused.stderr


@addition_only
def test_the_fork_check_passes_a_working_fork_and_fails_a_broken_one(tmp_path):
    """`python -m lab.fork_check`, the README's one command for a fork: it passes on the subtraction fork and
    stops, naming the step, on a fork whose texts outgrow the model's context."""
    good = fork(str(tmp_path / "good"), SUBTRACTION)
    passed = run(good, "-m", "lab.fork_check")
    assert "fork check passed: 'subtraction'" in passed.stdout
    long_line = ('lines.append(f"[] + [] , A=[{\',\'.join(acc)}] C={carry} , END\\n")',
                 'lines.append(f"[] + [] , A=[{\',\'.join(acc)}] C={carry} , END\\n" + "." * 900)')
    broken = fork(str(tmp_path / "broken"), [long_line])
    failed = subprocess.run([sys.executable, "-m", "lab.fork_check"], cwd=broken, capture_output=True,
                            text=True, timeout=600)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "fork check FAILED at the default recipe's context" in failed.stderr
    assert "raise --block-size" in failed.stderr
