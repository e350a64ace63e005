import pytest
import torch

import data
from model import GPT, GPTConfig, save_checkpoint


# for the tests that are about the addition task itself (its text, its scratchpad's fields, the shipped
# addition checkpoints): a fork of data.py to another task skips them, saying why
addition_only = pytest.mark.skipif(data.NAME != "addition", reason=f"about the addition task, and data.py's "
                                   f"task is {data.NAME!r}")


def task_problems(size, digits, seed=1234):
    """Problems of the task (data.py's, whichever it is) of mixed sizes up to `digits`: for tests that are not
    about addition, so that a fork that swaps the task keeps them."""
    return data.eval_set("pretrain", digits, size, seed=seed)


def stop_after_saving(monkeypatch, episode):
    """Ctrl-C right after rl.py's evaluation at `episode` was saved (the state is the last thing written).
    Returns the real save, to put back."""
    from lab import run_folder
    save = run_folder.atomic_save

    def save_then_stop(obj, path):
        save(obj, path)
        if obj["episode"] == episode:
            raise KeyboardInterrupt
    monkeypatch.setattr(run_folder, "atomic_save", save_then_stop)
    return save


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained 2-digit model saved as pretrain.py would save it (with data.py's task): enough for smoke
    runs."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ckpt") / "add2.pt")
    save_checkpoint(path, GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16)), args={"digits": 2})
    return path
