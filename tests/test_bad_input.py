"""Bad input, as a careless or hostile user gives it, to each script: every case must exit non-zero with one
clear line (argparse's usage lines aside), no traceback, and nothing written. Run in-process: each case costs
an argument parse and at most a checkpoint load."""
import os

import pytest
import torch

import analyze
from lab import bench, fork_check
import data
import pretrain
import rl
from model import GPT, GPTConfig, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADD7 = os.path.join(ROOT, "checkpoints", "add7.pt")
TINY_RL = ["--episodes", "8", "--batch-size", "2", "--group-size", "2", "--eval-size", "2", "--threads", "1"]

# (script, arguments, words the error line must contain); {tmp} is the test's empty folder, {ckpt} a tiny
# model
CASES = [
    # pretrain.py: flags
    ("pretrain", ["--digits", "0"], "--digits must be at least 1"),
    ("pretrain", ["--n-embd", "30", "--n-head", "4"], "divisible"),
    ("pretrain", ["--digits", "9", "--block-size", "100"], "raise --block-size"),
    ("pretrain", ["--lr", "-1"], "--lr must be positive"),
    ("pretrain", ["--steps", "many"], "invalid int value"),
    ("pretrain", ["--lr", "inf"], "finite"),
    ("pretrain", ["--min-lr", "-1"], "--min-lr must be between 0 and --lr"),
    ("pretrain", ["--warmup", "-10"], "--warmup must be at least 0"),
    ("pretrain", ["--grad-clip", "-1"], "non-negative"),
    ("pretrain", ["--eval-every", "0"], "at least 1"),
    ("pretrain", ["--threads", "0"], "--threads must be at least 1"),
    ("pretrain", ["--pool", "100000000"], "at most 1000000"),
    ("pretrain", ["--dtype", "float8"], "invalid choice"),
    # pretrain.py: sizes that do not fit, and outputs that cannot or must not be written
    ("pretrain", ["--batch-size", "60000", "--pool", "1"], "GB"),
    ("pretrain", ["--n-embd", "65536", "--n-head", "1"], "GB"),
    ("pretrain", ["--device", "tpu"], "unknown --device"),
    ("pretrain", ["--resume"], "--resume needs"),
    ("pretrain", ["--out", "{tmp}/existing.pt"], "exists"),
    ("pretrain", ["--out", "{tmp}/existing.pt/x.pt"], "cannot write"),
    ("pretrain", ["--out", "{tmp}"], "is a folder"),
    # rl.py: flags
    ("rl", ["--alpha", "-1"], "non-negative"),
    ("rl", ["--temperature", "0"], "--temperature must be positive"),
    ("rl", ["--kl-estimator", "k9"], "invalid choice"),
    ("rl", ["--dtype", "half"], "invalid choice"),
    ("rl", ["--kl-estimator", "k1"], "zero expected gradient"),
    ("rl", ["--lr", "inf"], "finite"),
    ("rl", ["--kl-coef", "inf"], "finite"),
    ("rl", ["--alpha", "nan"], "finite"),
    ("rl", ["--temperature", "1e-40"], "at least 0.01"),
    ("rl", ["--certainty-temperature", "0"], "--certainty-temperature must be positive"),
    ("rl", ["--group-size", "1"], "group of one learns nothing"),
    ("rl", ["--episodes", "65", "--batch-size", "16", "--group-size", "4"],
     "multiple of --batch-size x --group-size = 64"),
    ("rl", ["--name", "../../x"], "plain folder name"),
    ("rl", ["--name", "a/b"], "plain folder name"),
    ("rl", ["--eval-size", "1000000000"], "at most 10000"),
    ("rl", ["--batch-size", "100000000"], "at most 65536"),
    ("rl", ["--grad-clip", "-1"], "non-negative"),
    ("rl", ["--ppo-epochs", "0"], "--ppo-epochs must be at least 1 and at most 100"),
    ("rl", ["--ppo-epochs", "100000"], "at most 100"),  # hours per batch otherwise
    ("rl", ["--lr", "1e308"], "at most 1e+30"),  # AdamW overflows float32 otherwise
    ("pretrain", ["--lr", "1e308"], "at most 1e+30"),
    ("pretrain", ["--digits", "1000000000"], "at most 100"),  # its texts would be a billion digits long
    ("pretrain", ["--n-embd", "10000000"], "at most 65536"),
    ("rl", ["--clip", "1.5"], "--clip in (0, 1)"),
    # rl.py: checkpoints, sizes, run folders
    ("rl", ["--ckpt", "{tmp}/nope.pt"], "no checkpoint at"),
    ("rl", ["--ckpt", "{tmp}/existing.pt"], "damaged"),
    ("rl", ["--ckpt", "{tmp}/no_digits.pt"], "records no pre-training digits"),
    ("rl", ["--digits-plus", "20"], "lower --digits-plus"),
    ("rl", ["--digits-plus", "1000000000"], "at most 100"),  # hung building billion-digit problems
    ("rl", ["--ckpt", ADD7, "--batch-size", "16384", "--group-size", "4", "--episodes", "65536"], "GB"),
    ("rl", ["--name", "taken"], "--force"),
    ("rl", ["--name", "fresh", "--resume"], "resume"),
    ("rl", ["--device", "tpu"], "unknown --device"),
    # analyze.py
    ("analyze", ["errors", "--ckpt", "{tmp}/nope.pt"], "no checkpoint at"),
    ("analyze", ["errors", "--ckpt", "{ckpt}", "--digits", "30"], "positions"),
    ("analyze", ["accuracy", "--n", "0"], "--n must be at least 1"),
    ("analyze", ["probe", "--samples", "0"], "--samples must be at least 1"),
    ("analyze", ["study", "--jobs", "0"], "--jobs must be at least 1"),
    ("analyze", ["curves", "{tmp}/empty"], "no rl.py runs"),
    ("analyze", ["frontier", "{tmp}/broken"], "line 1 is not JSON"),
    ("analyze", ["unknown"], "invalid choice"),
    # lab/bench.py
    ("bench", ["--batch-size", "0"], "at least 1"),
    ("bench", ["--dtype", "float16"], "invalid choice"),
    ("bench", ["--batch-size", "100000000"], "at most 65536"),
    ("bench", ["--ckpt", "{tmp}/nope.pt"], "no checkpoint at"),
    ("bench", ["--ckpt", "{ckpt}", "--digits", "30"], "do not fit"),
    ("bench", ["--threads", "0"], "--threads must be at least 1"),
    ("bench", ["--eval-size", "1000000000"], "at most 10000"),
    ("bench", ["--digits", "1000000000"], "at most 100"),
    # lab/fork_check.py
    ("fork_check", ["--digits", "0"], "at least 1"),  # a traceback from random.randrange otherwise
    ("fork_check", ["--block-size", "1000000000000"], "at most 1048576"),
]
MAINS = {"pretrain": pretrain.main, "rl": rl.main, "analyze": analyze.main, "bench": bench.main,
         "fork_check": fork_check.main}
# where each script would write if it got that far: the test's folder
OUTPUTS = {"pretrain": ["--out", "{tmp}/new.pt"], "rl": ["--out", "{tmp}", *TINY_RL, "--ckpt", "{ckpt}"],
           "analyze": ["--results", "{tmp}"], "bench": ["--threads", "1"], "fork_check": []}


def files_under(folder):
    return sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names)


@pytest.fixture
def playground(tmp_path, tiny_checkpoint):
    """An empty-looking folder with the few things the cases need: an existing file, an existing run."""
    (tmp_path / "existing.pt").write_text("not a checkpoint")
    tiny = GPT(GPTConfig(block_size=64, n_layer=1, n_head=1, n_embd=8))
    save_checkpoint(str(tmp_path / "no_digits.pt"), tiny)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "run").mkdir(parents=True)
    (tmp_path / "broken" / "run" / "metrics.jsonl").write_text("{oops\n")
    (tmp_path / "broken" / "run" / "config.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("script, args, words", CASES, ids=[f"{s} {' '.join(a)}" for s, a, _ in CASES])
def test_bad_input_is_refused_with_one_line_and_nothing_written(script, args, words, playground,
                                                                tiny_checkpoint, capsys, monkeypatch):
    if (ADD7 in args or args[0] == "errors") and data.NAME != "addition":
        pytest.skip(f"about the addition task (the shipped model, or analyze.py errors, which refuses "
                    f"another task first), and data.py's task is {data.NAME!r}")
    monkeypatch.chdir(playground)  # a default output path would land here, and be seen
    defaults = OUTPUTS[script]
    pairs = [defaults[i:i + 2] for i in range(0, len(defaults), 2) if defaults[i] not in args]
    argv = [a.format(tmp=playground, ckpt=tiny_checkpoint) for a in args + sum(pairs, [])]
    before = files_under(playground)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_:
            MAINS[script](argv)
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    code = exit_.value.code
    message = code if isinstance(code, str) else err
    lines = [line for line in message.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert code not in (0, None), "a refusal must exit non-zero"
    assert "Traceback" not in err and len(lines) == 1, message
    assert "error" in lines[0] and words in lines[0], lines[0]
    assert files_under(playground) == before, "nothing may be written"


def test_there_are_at_least_forty_cases_across_the_scripts():
    assert len(CASES) >= 40 and {script for script, _, _ in CASES} == set(MAINS)


def test_an_operation_without_a_deterministic_kernel_is_refused_in_one_line():
    from lab.console import deterministic_refusal, run_script
    error = RuntimeError("scatter_add_cuda_kernel does not have a deterministic implementation, but you set "
                         "'torch.use_deterministic_algorithms(True)'.\nmore")
    line = deterministic_refusal(error)
    assert "\n" not in line and "--no-deterministic" in line and "scatter_add_cuda_kernel" in line
    assert deterministic_refusal(RuntimeError("CUDA out of memory")) is None

    def fails(error):
        def main():
            raise error
        return main
    with pytest.raises(SystemExit, match="--no-deterministic"):
        run_script(fails(error))
    with pytest.raises(RuntimeError, match="out of memory"):  # any other error is left as it is
        run_script(fails(RuntimeError("CUDA out of memory")))


def test_torchrun_where_it_cannot_work_is_refused_in_one_line(monkeypatch):
    from lab.ranks import start_ranks
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(SystemExit, match="Apple MPS is not supported"):
        start_ranks("mps")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit, match="LOCAL_RANK=3 but only 2 CUDA GPU"):
        start_ranks("cuda")


def test_determinism_is_a_flag_of_both_training_scripts_and_not_a_setting():
    from lab import curves
    from lab import run_folder
    assert rl.get_args([]).deterministic and not rl.get_args(["--no-deterministic"]).deterministic
    assert not pretrain.get_args(["--no-deterministic"]).deterministic
    assert "deterministic" in curves.NOT_A_SETTING and "deterministic" in run_folder.RESUME_MAY_DIFFER
