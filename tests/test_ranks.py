"""More than one process: torchrun runs each script with two ranks (gloo on a CPU), and two ranks' summed
gradients are those of one process on the union of their shares."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import data
from conftest import addition_only, task_problems
from model import GPT, GPTConfig, load_checkpoint
from lab.ranks import sum_gradients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "256", "--batch-size", "8",
        "--eval-size", "4", "--device", "cpu", "--threads", "1", "--seed", "0"]
BATCH = task_problems(6, 2)


def torchrun(script, *flags):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
               *flags]
    r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_pretraining_with_two_ranks_matches_one_process(tmp_path):
    flags = ["--digits", "2", "--steps", "3", "--eval-every", "3", *TINY]
    torchrun("pretrain.py", *flags, "--out", str(tmp_path / "two.pt"))
    subprocess.run([sys.executable, "pretrain.py", *flags, "--out", str(tmp_path / "one.pt")], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    one, two = (load_checkpoint(str(tmp_path / f"{name}.pt")).state_dict() for name in ("one", "two"))
    # Adam divides by the gradient's size: where a gradient is ~1e-8, rounding can flip a step of lr; a
    # rank that trained on its share alone would move most weights elsewhere
    differ = sum(((one[k] - two[k]).abs() > 1e-6).sum().item() for k in one)
    assert differ <= 0.01 * sum(t.numel() for t in one.values()), f"{differ} weights differ"
    # both ranks read the saved state back (its own --steps: a resume never changes the schedule)
    torchrun("pretrain.py", *flags, "--out", str(tmp_path / "two.pt"), "--resume")


def _share_gradients(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16))
    share = BATCH[rank::world]
    x, y = data.make_batch(share)
    _, loss = model(x, y)
    targets = sum(len(data.target(problem)) for problem in BATCH)
    (loss * (y != -1).sum() / targets).backward()  # as pretrain.py weighs a rank's share
    sum_gradients(model)
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], out)
    dist.destroy_process_group()


def test_summed_share_gradients_equal_the_gradient_of_the_whole_batch(tmp_path):
    out = str(tmp_path / "grads.pt")
    with socket.socket() as probe:  # a free port for the two processes to meet on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_share_gradients, args=(2, port, out), nprocs=2)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16))
    x, y = data.make_batch(BATCH)
    model(x, y)[1].backward()
    for alone, shared in zip((p.grad for p in model.parameters()), torch.load(out)):
        assert torch.allclose(alone, shared, atol=1e-6, rtol=1e-4)


def test_rl_with_two_ranks_logs_once_and_resumes_only_with_two(tiny_checkpoint, tmp_path):
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--name", "two", "--no-save",
             "--device", "cpu", "--threads", "1"]
    r = torchrun("rl.py", *flags)
    assert r.stdout.count("done:") == 1  # rank 0 alone reports
    rows = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    steps = [json.loads(line) for line in open(tmp_path / "two" / "train.jsonl")]
    assert [row["episode"] for row in rows] == [0, 4, 8] and [row["episode"] for row in steps] == [4, 8]
    assert json.load(open(tmp_path / "two" / "config.json"))["ranks"] == 2
    # started again without --force: the first rank refuses in one line, the second says nothing
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "rl.py", *flags]
    r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and (r.stdout + r.stderr).count("already holds a run") == 1
    assert "[rank1]" not in r.stderr and "Connection closed" not in r.stderr, r.stderr[-3000:]


def test_a_run_of_two_processes_resumed_by_one_is_told_the_torchrun_command(tiny_checkpoint, tmp_path,
                                                                             monkeypatch):
    import rl
    from conftest import stop_after_saving
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--name", "two", "--no-save",
             "--device", "cpu", "--threads", "1"]
    stop_after_saving(monkeypatch, 4)
    with pytest.raises(SystemExit, match="interrupted"):
        rl.main(flags)
    config_path, state_path = tmp_path / "two" / "config.json", tmp_path / "two" / "state.pt"
    config = json.load(open(config_path))
    json.dump({**config, "ranks": 2}, open(config_path, "w"))  # as torchrun with two processes wrote it
    state = torch.load(state_path, weights_only=False)
    state["identity"]["ranks"] = 2
    torch.save(state, state_path)
    with pytest.raises(SystemExit) as stop:
        rl.main([*flags, "--resume"])
    assert "made by 2 process(es) and this is 1" in str(stop.value.code)
    assert "; to go on: torchrun --standalone --nproc_per_node 2 rl.py --ckpt " in str(stop.value.code)
    assert str(stop.value.code).endswith("--threads 1 --name two --resume")


def test_a_run_of_two_ranks_does_not_resume_alone():
    from lab.run_folder import restore_state
    state = {"generator": [torch.Generator().get_state()] * 2}
    with pytest.raises(SystemExit, match="2 process"):
        restore_state(state, None, None, None, torch.Generator())


@addition_only
def test_the_study_prints_one_command_per_run():
    r = subprocess.run([sys.executable, "analyze.py", "study", "--print-commands"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) >= 10
    assert all(line.startswith("python rl.py ") and "--threads 1" in line for line in lines)
    assert len({line.split("--name ")[1].split()[0] for line in lines}) == len(lines)  # no run twice
