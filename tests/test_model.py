import pytest
import torch

import data
from conftest import task_problems
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, save_checkpoint
from lab.runtime import generation_dtype

TINY = GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=32)
PROBLEMS = task_problems(4, 4)


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
        alone, _ = model(torch.tensor([data.encode(data.prompt((a, b)))]))
        n = alone.size(1)
        assert torch.allclose(logits[i, -n:], alone[0], atol=1e-5)


def test_kv_cache_generation_equals_full_forward_greedy():
    model = tiny_model()
    steps = 40
    out = model.generate(data.prompt_batch(PROBLEMS), steps, temperature=0, stop=data.Stop)
    width = out.size(1) - steps
    for i, (a, b) in enumerate(PROBLEMS):
        expected = greedy_by_full_forward(model, data.encode(data.prompt((a, b))), steps)
        assert out[i, width:].tolist() == expected


def test_sampling_is_reproducible_with_a_generator():
    model = tiny_model()
    idx = data.prompt_batch(PROBLEMS)
    runs = [model.generate(idx, 30, temperature=1.0, generator=torch.Generator().manual_seed(7),
                           stop=data.Stop) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


class ScriptedGPT(GPT):
    """Writes a fixed text after every prompt, whatever the input; a prompt k characters longer than the
    shortest one starts k characters late, with newlines. Rows are told apart by their positions, not
    by where they sit in the batch, so the script survives finished rows leaving the batch."""

    def __init__(self, text):
        super().__init__(TINY)
        self.script = data.encode(text)

    def _forward_cached(self, idx, positions, mask=None, caches=None, start=0):
        B, T = idx.shape
        if start == 0:  # the prompts: positions[:, -1] is each prompt's length - 1
            self.width, self.shortest = T, int(positions[:, -1].min()) + 1
            written, lengths = 0, positions[:, -1] + 1
        else:  # one new token per row; its position is the prompt's length + tokens written before it
            written = start - self.width + 1
            lengths = positions[:, -1] - written + 1
        logits = torch.zeros(B, T, TINY.vocab_size)
        for i in range(B):
            t = written - int(lengths[i] - self.shortest)
            logits[i, -1, data.NEWLINE_ID if t < 0 else self.script[min(t, len(self.script) - 1)]] = 10.0
        return logits


@pytest.mark.parametrize("fast", [False, True])
def test_generation_stops_each_row_after_its_answer_line(fast):
    scratch = data.scratchpad(12, 34)
    model = ScriptedGPT(scratch + "12+34 Target: 5 6\n")
    out = model.generate(data.prompt_batch([(12, 34), (120, 34), (1200, 34)]), 200, temperature=0, fast=fast,
                         stop=data.Stop)
    width = data.prompt_batch([(1200, 34)]).size(1)
    for i, row in enumerate(out[:, width:].tolist()):
        assert data.decode(row) == "\n" * i + scratch  # row i starts i newlines late
        assert row[len(scratch) + i:] == [data.PAD_ID] * (2 - i)  # finished rows are padded
    # the loop ends as soon as the last row is done
    assert out.size(1) - width == len(scratch) + 2


def test_too_long_generation_gives_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model.generate(data.prompt_batch(PROBLEMS), 500, stop=data.Stop)


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
    assert not loaded.training and meta == {"note": "hello", "step": 3, "task": data.NAME}
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
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["n_head"] = 3  # 32 is not divisible by 3
    torch.save(ckpt, tmp_path / "heads.pt")
    with pytest.raises(CheckpointError, match="not divisible by n_head 3"):
        load_checkpoint(str(tmp_path / "heads.pt"))
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
        out = model.generate(idx, 20, temperature=0, stop=data.Stop)
        logits, _ = model(out)
    assert out.shape == (len(PROBLEMS), idx.size(1) + 20)
    # the cached decoding follows the full forward pass's greedy choice wherever that choice is clear
    top2 = logits[:, idx.size(1) - 1:-1].float().topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.1
    assert (logits[:, idx.size(1) - 1:-1].argmax(-1) == out[:, idx.size(1):])[clear].all()


def mixed_lengths():
    """Problems whose scratchpads differ a lot in length, so rows finish at different steps."""
    return data.prompt_batch(task_problems(6, 6, seed=7))


def test_fast_generation_gives_the_plain_loops_tokens_greedy_float32():
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # make the untrained model stop now and then: favour newline and '/'
        model.lm_head.weight[data.NEWLINE_ID] += 0.3
        model.lm_head.weight[data.SLASH_ID] += 0.3
    idx = mixed_lengths()
    plain = model.generate(idx, 120, temperature=0, fast=False, stop=data.Stop)
    fast = model.generate(idx, 120, temperature=0, fast=True, stop=data.Stop)
    assert torch.equal(plain, fast)


def test_fast_generation_draws_the_plain_loops_samples_with_the_same_generator():
    model = tiny_model()
    idx = mixed_lengths()
    for temperature in (1.0, 2.0):
        plain = model.generate(idx, 200, temperature, torch.Generator().manual_seed(3), fast=False,
                               stop=data.Stop)
        fast = model.generate(idx, 200, temperature, torch.Generator().manual_seed(3), fast=True,
                              stop=data.Stop)
        assert torch.equal(plain, fast)
        rows_finished_early = (plain[:, -1] == data.PAD_ID).sum()
        assert 0 < rows_finished_early < len(idx)  # rows did leave the batch early in the fast loop


def test_sampling_follows_the_distribution():
    from lab.generation import sample
    p = torch.tensor([0.3, 0.5, 0.15, 0.05])
    logits = torch.log(p).repeat(20000, 1)
    for temperature in (1.0, 0.5):  # temperature T turns p into p^(1/T), renormalised
        tokens = sample(logits, temperature, torch.Generator().manual_seed(0))
        counts = torch.bincount(tokens, minlength=4).float() / len(tokens)
        expected = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
        assert torch.allclose(counts, expected, atol=0.015)
    assert sample(logits[:2], 0).tolist() == [1, 1]  # greedy
    # one noise row per batch row: a row's draw does not depend on which other rows are decoded
    full = sample(logits[:6], 1.0, torch.Generator().manual_seed(4))
    some = sample(logits[:3], 1.0, torch.Generator().manual_seed(4), rows=torch.tensor([1, 3, 5]), batch=6)
    assert some.tolist() == full[[1, 3, 5]].tolist()


def test_padding_is_never_predicted_nor_sampled():
    model = tiny_model()
    with torch.no_grad():
        model.wte.weight[data.PAD_ID] *= 100  # tied head: padding would now win most positions
    x, _ = data.make_batch(PROBLEMS)
    probs = torch.softmax(model(x)[0], -1)
    assert probs[..., data.PAD_ID].max() == 0 and torch.isfinite(torch.log_softmax(model(x)[0], -1)).all()
    prompts = data.prompt_batch(PROBLEMS * 8)
    first = model.generate(prompts, 1, temperature=3.0, generator=torch.Generator().manual_seed(0),
                           stop=data.Stop)[:, -1]
    assert (first != data.PAD_ID).all()


def test_logits_are_float32_under_bfloat16_autocast():
    model = tiny_model()
    x, _ = data.make_batch(PROBLEMS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = model(x)
    full, _ = model(x)
    assert low.dtype == torch.float32 and 0 < (low - full).abs().max() < 0.05  # the body ran in bfloat16
    assert (low != low.bfloat16().float()).float().mean() > 0.9  # the head did not round to bfloat16's 8 bits


def test_generation_runs_in_float32_on_a_cpu_unless_a_precision_is_asked_for():
    assert generation_dtype("auto", "cpu") is None  # float32: decoding is faster in it on CPUs (model.py)
    assert generation_dtype("bfloat16", "cpu") is torch.bfloat16 and generation_dtype("float32",
                                                                                      "cpu") is None


@pytest.mark.parametrize("fast", [False, True])
def test_looking_at_finished_rows_less_often_gives_the_same_tokens(fast):
    """A GPU looks at which rows are finished every few steps only (a look stalls its queue); the extra steps
    write padding that is cut off again, so every check_every gives the tokens of check_every=1."""
    model = tiny_model()
    idx = mixed_lengths()
    for temperature in (0.0, 1.0):
        runs = [model.generate(idx, 200, temperature, torch.Generator().manual_seed(3), fast=fast,
                               stop=data.Stop, check_every=every) for every in (1, 7, 16)]
        assert all(torch.equal(runs[0], other) for other in runs[1:])
        assert (runs[0][:, -1] != data.PAD_ID).any()  # cut back to the last real token, not padded beyond it


def test_a_zero_draw_of_the_sampling_noise_never_picks_an_impossible_token(monkeypatch):
    from lab.generation import sample
    logits = torch.tensor([[-1e4, 0.0, 1.0, -1e4]]).repeat(4, 1)  # tokens 0 and 3 have probability 0
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self, generator=None: self.zero_())
    assert sample(logits, 1.0).tolist() == [2, 2, 2, 2]  # every draw 0: the race falls back to the argmax


def test_generation_precision_is_float32_on_every_device_unless_asked_for():
    for device in ("cpu", "cuda", "cuda:1", "mps"):  # the rule, not the hardware: no GPU needed to check it
        assert generation_dtype("auto", device) is None and generation_dtype("float32", device) is None
    assert generation_dtype("bfloat16", "cpu") is torch.bfloat16


def test_auto_precision_counts_only_native_bfloat16_on_cuda(monkeypatch):
    from lab.runtime import autocast_dtype
    asked = []

    def bf16_supported(including_emulation=True):  # a T4: emulates bfloat16, has no native support
        asked.append(including_emulation)
        return including_emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    assert autocast_dtype("auto", "cuda") is None and asked == [False]
    assert autocast_dtype("auto", "cuda:1") is None and autocast_dtype("bfloat16", "cuda") is torch.bfloat16


def test_the_memory_estimate_counts_attention_maps_where_attention_is_not_fused():
    from lab.runtime import training_gb
    config = GPTConfig()
    fused, unfused = training_gb(config, 64, 700), training_gb(config, 64, 700, attention_maps=True)
    maps = 2 * 64 * config.n_layer * config.n_head * 700 ** 2 * 4 / 1e9  # probabilities and their gradient
    assert unfused - fused == pytest.approx(maps)


def test_the_plain_loop_writes_what_generate_does():
    """GPT.sample_plainly (nanoGPT's loop, a prompt at a time, no cache) and GPT.generate's speed path (KV
    cache, the correct text as a draft) write the same greedy texts, and rl.rollout's plain path lines its
    rows up as the speed path does."""
    import rl
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, n_layer=2, n_head=2, n_embd=32)).eval()
    problems = task_problems(6, 2)
    fast = rl.rollout(model, problems, 0, None, sampler="draft")
    plain = rl.rollout(model, problems, 0, None, sampler="plain")
    assert plain[2] == fast[2]
    cut = lambda seq: [row[:len(row) - next(i for i, t in enumerate(reversed(row)) if t != data.PAD_ID)]
                       for row in seq.tolist()]
    assert cut(plain[1]) == cut(fast[1])
