"""The fourth worked fork: data.py alone edited to teach multiplication, with a character the vocabulary
lacked ('*') and a scratchpad of its own (one line per digit of the second operand: the partial product
and the running total). The paper's critical commas are the addition scratchpad's, so this task has none
(critical_positions finds no operand list and returns nothing). Then `python -m lab.fork_check`, the
README's one command for a fork, runs pre-training, RL and the accuracy table on a tiny model of it.

The suite itself was run on this fork by hand (the closing note of issue 69 gives the counts): every test
that assumes addition is marked `addition_only` and skips there, saying why; the others pass."""
import os
import subprocess
import sys

from conftest import addition_only
from test_fork_subtraction import fork, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (what data.py says, what the fork says instead): the whole fork
SCRATCHPAD_ADDITION = '''    top, bottom, acc, carry = _digits(a), _digits(b), [], 0
    lines = []
    while top or bottom:
        x = int(top[-1]) if top else 0  # an exhausted operand contributes 0
        y = int(bottom[-1]) if bottom else 0
        s = x + y + carry
        lines.append(f"[{','.join(top)}] + [{','.join(bottom)}] , A=[{','.join(acc)}] , C={carry} , "
                     f"{x}+{y}+{carry}={s} , A->{s % 10} , C->{s // 10}\\n")
        acc.insert(0, str(s % 10))  # A is written most significant digit first
        carry = s // 10
        top, bottom = top[:-1], bottom[:-1]
    # the last line has no ' , ' before 'C=': an inconsistency of the original format, kept on purpose
    lines.append(f"[] + [] , A=[{','.join(acc)}] C={carry} , END\\n")
    return "\\n<scratch>\\n" + "".join(lines) + "</scratch>\\n" + answer_line(a + b) + "\\n"'''
SCRATCHPAD_MULTIPLICATION = '''    lines, total = [], 0
    for place, d in enumerate(reversed(_digits(b))):  # long multiplication, the last digit of b first
        part = a * int(d) * 10 ** place
        total += part
        lines.append(f"{a}*{d}<{place} , ={part} , A={total}\\n")
    lines.append(f"A={total} , END\\n")
    return "\\n<scratch>\\n" + "".join(lines) + "</scratch>\\n" + answer_line(a * b) + "\\n"'''
MULTIPLICATION = [
    ('NAME = "addition"', 'NAME = "multiplication"'),
    ('return f"Input:\\n{a}+{b}\\nTarget:"', 'return f"Input:\\n{a}*{b}\\nTarget:"'),
    (SCRATCHPAD_ADDITION, SCRATCHPAD_MULTIPLICATION),
    ("return float(parse_answer(completion) == a + b)", "return float(parse_answer(completion) == a * b)"),
    ('VOCAB = PAD + "\\n +,-/:<=>ACDEINT[]aceghinprstu0123456789"',
     'VOCAB = PAD + "\\n +,-/:<=>ACDEINT[]aceghinprstu0123456789*"'),
]


@addition_only
def test_a_multiplication_fork_with_a_new_character_passes_the_fork_check(tmp_path):
    copy = fork(str(tmp_path), MULTIPLICATION)
    check = ("import data; p = (47, 306); t = data.target(p); "
             "assert data.reward(p, t) == 1.0 and t.endswith('\\n1 4 3 8 2\\n'), t; "
             "assert '47*3<2 , =14100 , A=14382' in t, t; "
             "assert data.critical_positions(p, 2) == [] and data.encode('*'); print(t)")
    run(copy, "-c", check)
    passed = run(copy, "-m", "lab.fork_check")
    assert "fork check passed: 'multiplication'" in passed.stdout
    # a shipped addition checkpoint has another task and another vocabulary: refused in one line
    refused = subprocess.run([sys.executable, "rl.py", "--ckpt", os.path.join(ROOT, "checkpoints", "add3.pt"),
                              "--out", "runs"], cwd=copy, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "task 'addition'" in refused.stderr
    assert "Traceback" not in refused.stderr
