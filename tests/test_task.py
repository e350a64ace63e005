"""The task behind one boundary: a toy task (write a digit string reversed) plugged into pre-training and RL
through data.py's interface, data.TASK, on a tiny model. If a script reached past the interface to the
addition task, this would fail: the addition-only functions are made to raise."""
import json
import random

import pytest
import torch

import analyze
import data
import pretrain
import rl
from model import CheckpointError, load_checkpoint

DIGITS = "0123456789"
TASK_NAME = data.NAME  # data.py's own task, which the test checkpoint records (reverse_task replaces it)


class Reverse:
    """A problem is a digit string; the model writes it reversed on one line, then stops."""

    @staticmethod
    def prompt(problem):
        return f"Input:\n{problem}\nTarget:"

    @staticmethod
    def target(problem):
        return f"\n{problem[::-1]}\n"

    @staticmethod
    def reward(problem, completion):
        lines = completion.split("\n")
        return float(len(lines) > 2 and lines[1] == problem[::-1])

    @staticmethod
    def pretrain_problem(n, rng):
        return "".join(rng.choice(DIGITS) for _ in range(rng.randint(1, n)))

    @staticmethod
    def rl_problem(n, k, rng, held_out=False):
        return "".join(rng.choice(DIGITS) for _ in range(n + k))

    @staticmethod
    def eval_set(kind, k, size, seed=1234, n=None, exclude=()):
        rng = random.Random(f"{kind}-{k}-{n}-{seed}")
        length = (n or 0) + k if kind == "rl" else k
        return ["".join(rng.choice(DIGITS) for _ in range(length)) for _ in range(size)]

    @staticmethod
    def rl_eval_sets(n, k, size):
        return {"plus": Reverse.eval_set("rl", k, size, n=n), "val": Reverse.eval_set("rl", k, size, seed=1,
                                                                                      n=n),
                "comfort": Reverse.eval_set("identical", n, size), "critical": Reverse.eval_set("identical",
                                                                                                n + 1, 2)}

    @staticmethod
    def longest_sequence(k):
        return len(Reverse.prompt("9" * k)) + len(Reverse.target("9" * k))

    @staticmethod
    def critical_positions(problem, n, lines=3):
        return [n]  # the first character the pre-training lengths never reached

    class Stop:
        def __init__(self, rows, device):
            self.newlines = torch.zeros(rows, dtype=torch.long, device=device)

        def __call__(self, tok):
            self.newlines += (tok == data.NEWLINE_ID).long()
            return self.newlines >= 2

        def keep(self, rows):
            self.newlines = self.newlines[rows]


def refuse(*args, **kwargs):
    raise AssertionError("a script reached the addition task past data.TASK")


@pytest.fixture
def reverse_task(monkeypatch):
    for name in data.TASK:
        monkeypatch.setattr(data, name, getattr(Reverse, name))
    monkeypatch.setattr(data, "NAME", "reverse")
    for name in ("scratchpad", "answer_line", "parse_answer", "rl_lengths", "operand"):  # addition only
        monkeypatch.setattr(data, name, refuse)


def test_the_interface_lists_every_name_the_toy_task_provides():
    assert all(callable(getattr(Reverse, name)) for name in data.TASK)
    assert all(callable(getattr(data, name)) for name in data.TASK)


def test_a_toy_task_pretrains_and_fine_tunes_through_the_interface(reverse_task, tmp_path):
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "64", "--batch-size", "8",
            "--eval-size", "4", "--device", "cpu", "--threads", "1"]
    out = str(tmp_path / "reverse.pt")
    pretrain.main(["--digits", "3", "--steps", "12", "--eval-every", "6", "--out", out, *tiny])
    rl.main(["--ckpt", out, "--episodes", "8", "--batch-size", "2", "--group-size", "2", "--eval-every", "4",
             "--eval-size", "4", "--out", str(tmp_path), "--name", "reverse", "--device", "cpu",
             "--threads", "1", "--no-save"])
    rows = [json.loads(line) for line in open(tmp_path / "reverse" / "metrics.jsonl")]
    assert [row["episode"] for row in rows] == [0, 4, 8]
    assert all(0 <= row["acc_plus"] <= 100 and 0 <= row["critical_p"] <= 1 for row in rows)
    steps = [json.loads(line) for line in open(tmp_path / "reverse" / "train.jsonl")]
    assert [row["iteration"] for row in steps] == [1, 2]
    assert all(row["completion_length"] > 0 for row in steps)
    analyze.main(["accuracy", "--ckpt", out, "--extra", "1", "--n", "4", "--cache", "", "--device", "cpu",
                  "--results", str(tmp_path / "tables")])
    assert "Table 4" in (tmp_path / "tables" / "accuracy.md").read_text()


def test_a_model_of_another_task_is_refused_in_one_line(reverse_task, tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=f"trained on the task {TASK_NAME!r}") as e:
        load_checkpoint(tiny_checkpoint)
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="task"):
        rl.main(["--ckpt", tiny_checkpoint, "--out", str(tmp_path), "--device", "cpu"])
