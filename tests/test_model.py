import pytest
import torch

import data
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, save_checkpoint

TINY = GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=32)
PROBLEMS = [(1234, 567), (5, 7), (99, 1), (31, 4096)]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(TINY).eval()


def greedy_by_full_forward(model, prompt_ids, steps):
    """Reference decoding: re-run the whole unpadded sequence for every new token."""
    ids = torch.tensor([prompt_ids])
    for _ in range(steps):
        logits, _ = model(ids)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, len(prompt_ids):].tolist()


def test_forward_returns_logits_at_every_position_and_masked_loss():
    model = tiny_model()
    x, y = data.make_batch(PROBLEMS)
    logits, loss = model(x, y)
    assert logits.shape == (*x.shape, len(data.VOCAB))
    manual = torch.nn.functional.cross_entropy(logits[y != -1], y[y != -1])
    assert torch.allclose(loss, manual)
    assert model(x)[1] is None


def test_left_padding_does_not_change_a_row():
    model = tiny_model()
    x = data.prompt_batch(PROBLEMS)
    logits, _ = model(x)
    for i, (a, b) in enumerate(PROBLEMS):
        alone, _ = model(torch.tensor([data.encode(data.prompt(a, b))]))
        n = alone.size(1)
        assert torch.allclose(logits[i, -n:], alone[0], atol=1e-5)


def test_kv_cache_generation_equals_full_forward_greedy():
    model = tiny_model()
    steps = 40
    out = model.generate(data.prompt_batch(PROBLEMS), steps, temperature=0)
    width = out.size(1) - steps
    for i, (a, b) in enumerate(PROBLEMS):
        expected = greedy_by_full_forward(model, data.encode(data.prompt(a, b)), steps)
        assert out[i, width:].tolist() == expected


def test_sampling_is_reproducible_with_a_generator():
    model = tiny_model()
    idx = data.prompt_batch(PROBLEMS)
    runs = [model.generate(idx, 30, temperature=1.0, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


class ScriptedGPT(GPT):
    """Writes a fixed text for every row (row i starts i characters late), whatever the input."""

    def __init__(self, text):
        super().__init__(TINY)
        self.script = data.encode(text)
        self.calls = 0

    def _run(self, idx, positions, mask=None, caches=None, start=0):
        B, T = idx.shape
        logits = torch.zeros(B, T, TINY.vocab_size)
        for i in range(B):
            t = max(0, self.calls - i)
            logits[i, -1, self.script[min(t, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return logits


def test_generation_stops_each_row_after_its_answer_line():
    scratch = data.scratchpad(12, 34)
    model = ScriptedGPT(scratch + "12+34 Target: 5 6\n")
    out = model.generate(data.prompt_batch([(12, 34)] * 3), 200, temperature=0)
    width = data.prompt_batch([(12, 34)]).size(1)
    for i, row in enumerate(out[:, width:].tolist()):
        assert data.decode(row) == "\n" * i + scratch  # row i starts i newlines late
        assert row[len(scratch) + i:] == [data.PAD_ID] * (2 - i)  # finished rows are padded
    # the loop ends as soon as the last row is done
    assert out.size(1) - width == len(scratch) + 2


def test_too_long_generation_gives_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model.generate(data.prompt_batch(PROBLEMS), 500)


def test_same_seed_same_loss():
    x, y = data.make_batch(PROBLEMS)
    losses = []
    for _ in range(2):
        model = tiny_model(seed=3).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(3):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
    assert losses[0] == losses[1]


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    path = tmp_path / "m.pt"
    save_checkpoint(str(path), model, note="hello", step=3)
    loaded, meta = load_checkpoint(str(path), with_meta=True)
    assert not loaded.training and meta == {"note": "hello", "step": 3}
    assert loaded.lm_head.weight is loaded.wte.weight
    x = data.prompt_batch(PROBLEMS)
    assert torch.equal(model(x)[0], loaded(x)[0])
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was renamed away


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(str(damaged))
    path = tmp_path / "m.pt"
    save_checkpoint(str(path), tiny_model())
    ckpt = torch.load(path, weights_only=True)
    ckpt["vocab"] = ckpt["vocab"] + "#"
    torch.save(ckpt, tmp_path / "vocab.pt")
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_checkpoint(str(tmp_path / "vocab.pt"))
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model"]["wpe.weight"]
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(str(tmp_path / "partial.pt"))
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(str(tmp_path / "other.pt"))
    for error in ("missing.pt", "damaged.pt"):
        try:
            load_checkpoint(str(tmp_path / error))
        except CheckpointError as e:
            assert "\n" not in str(e)


def test_generation_under_bfloat16_autocast_keeps_the_cache_in_bfloat16():
    model = tiny_model()
    idx = data.prompt_batch(PROBLEMS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(idx, 20, temperature=0)
        logits, _ = model(out)
    assert out.shape == (len(PROBLEMS), idx.size(1) + 20)
    # the cached decoding follows the full forward pass's greedy choice wherever that choice is clear
    top2 = logits[:, idx.size(1) - 1:-1].float().topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.1
    assert (logits[:, idx.size(1) - 1:-1].argmax(-1) == out[:, idx.size(1):])[clear].all()
