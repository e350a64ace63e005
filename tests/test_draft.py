"""GPT.generate's free draft: decoding along a guessed continuation (the task's correct text) must give what
the token-by-token loop gives: the same greedy tokens, and samples from the same distribution."""
import math
import os

import pytest
import torch

import data
from lab import generation
from conftest import addition_only, task_problems
from model import GPT, GPTConfig, load_checkpoint

ADD7 = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "add7.pt")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # make the untrained model stop now and then: favour newline and '/'
        model.lm_head.weight[data.NEWLINE_ID] += 0.3
        model.lm_head.weight[data.SLASH_ID] += 0.3
    return model


def mixed_prompts():
    return data.prompt_batch(task_problems(6, 6, seed=7))


def new_tokens(sequences, prompts):
    return sequences[:, prompts.size(1):]


@pytest.mark.parametrize("check_every", [1, 16])
def test_greedy_along_any_draft_gives_the_plain_loops_tokens(check_every):
    """The draft is the plain loop's own text, changed at a different place in each row (or cut short, or
    left whole): each row departs there, and must then go on exactly as the plain loop did."""
    model, idx = tiny_model(), mixed_prompts()
    plain = model.generate(idx, 150, temperature=0, fast=False, stop=data.Stop)
    text = new_tokens(plain, idx)
    drafts = text.clone()
    for row, place in enumerate([0, 3, 40, 90, None, 149]):
        if place is not None and place < drafts.size(1):
            drafts[row, place] = data.STOI["7"] if drafts[row, place] != data.STOI["7"] else data.STOI["8"]
    drafts[4, 60:] = data.PAD_ID  # a draft shorter than the text: the row goes on from its end
    for draft in (drafts, text, text[:, :5], torch.full_like(text, data.STOI["9"])):
        out = model.generate(idx, 150, temperature=0, stop=data.Stop, draft=draft, check_every=check_every)
        assert torch.equal(out, plain)
    without_stop = model.generate(idx, 40, temperature=0, fast=False)  # no stop rule: every row writes 40
    assert torch.equal(model.generate(idx, 40, temperature=0, draft=drafts), without_stop)


def test_rows_that_leave_the_draft_at_different_places_may_use_every_position():
    """A model whose positions end right after the budget: rows depart at different places, so they have
    different budgets left, and the finished ones stay in the batch for a while (an RL run once stopped here
    with a position past the model's last)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = data.prompt_batch(task_problems(8, 2))
    budget = model.config.block_size - idx.size(1)
    plain = model.generate(idx, budget, temperature=0, fast=False)
    drafts = new_tokens(plain, idx).clone()
    for row, place in enumerate([budget - 3, 1, 2, 3, 4, 5, 6, 7]):  # one row ends soon, the others go on
        drafts[row, place] = (drafts[row, place] + 1) % len(data.VOCAB) or 1
    assert torch.equal(model.generate(idx, budget, temperature=0, draft=drafts), plain)


@addition_only
@pytest.mark.skipif(not os.path.exists(ADD7), reason="needs checkpoints/add7.pt")
def test_greedy_with_the_correct_text_as_draft_matches_the_plain_loop_on_add7():
    """200 held-out 8+8-digit problems with the shipped 7-digit model (43% right: many rows depart, at every
    line of the scratchpad). Measured: 0 of 200 texts differ. A near-tie (two logits equal to float32
    rounding, since the pass sums attention in another order than one-token steps) could flip one."""
    model = load_checkpoint(ADD7)
    problems = data.eval_set("identical", 8, 200)
    drafted = generation.complete(model, problems, draft=True)
    plain = generation.complete(model, problems, draft=False)
    assert sum(a != b for a, b in zip(drafted, plain)) == 0
    errors = [data.first_error(p, text) for p, text in zip(problems, plain)]
    assert 50 < sum(e is not None for e in errors) < 150 and min(e for e in errors if e is not None) < 100


def exact_distribution(model, prompt, steps, temperature):
    """{tuple of the first `steps` new tokens: probability} under the model, by enumerating every prefix."""
    probabilities = {(): 1.0}
    for _ in range(steps):
        prefixes = list(probabilities)
        rows = torch.tensor([prompt + list(p) for p in prefixes])
        with torch.no_grad():
            p_next = torch.softmax(model(rows)[0][:, -1] / temperature, -1)
        probabilities = {prefix + (tok,): probabilities[prefix] * p_next[i, tok].item()
                         for i, prefix in enumerate(prefixes) for tok in range(p_next.size(1))
                         if probabilities[prefix] * p_next[i, tok].item() > 1e-7}
    return probabilities


def chi_square(counts, probabilities, n):
    """Pearson's statistic over the outcomes expected at least 5 times (the rest lumped into one cell) and
    its 0.1% critical value (Wilson-Hilferty approximation of the chi-square quantile)."""
    big = {o for o, p in probabilities.items() if p * n >= 5}
    cells = [(counts.get(o, 0), probabilities[o] * n) for o in big]
    rest = n - sum(c for c, _ in cells), n * (1 - sum(probabilities[o] for o in big))
    cells += [rest] if rest[1] >= 5 else []
    statistic = sum((c - e) ** 2 / e for c, e in cells)
    k = len(cells) - 1
    critical = k * (1 - 2 / (9 * k) + 3.09 * math.sqrt(2 / (9 * k))) ** 3
    return statistic, critical


def test_sampling_along_a_draft_follows_the_models_distribution():
    """6000 samples of 3 tokens after one prompt, along a 2-token draft (the greedy tokens), against the
    exact distribution enumerated from the model: about half the rows depart at the first token, a
    quarter take the whole draft and draw the token after it. The test has power: the same samples fail
    against the distribution at temperature 1.15, and the plain loop's samples pass."""
    model = tiny_model(3)
    with torch.no_grad():
        model.wte.weight.mul_(6.0)  # a peaked distribution (few likely outcomes), tied to the head
    prompt = data.encode(data.prompt(task_problems(1, 1)[0]))
    n, temperature = 6000, 1.0
    idx = torch.tensor([prompt] * n)
    greedy = new_tokens(model.generate(idx[:1], 2, temperature=0), idx)
    exact = exact_distribution(model, prompt, 3, temperature)
    counts = {}
    for draft in (greedy.expand(n, -1), None):
        generator = torch.Generator().manual_seed(0)
        out = new_tokens(model.generate(idx, 3, temperature, generator, draft=draft), idx)
        counts[draft is None] = {}
        for row in map(tuple, out.tolist()):
            counts[draft is None][row] = counts[draft is None].get(row, 0) + 1
        if draft is not None:
            departed_first = (out[:, 0] != greedy[0, 0]).float().mean().item()
            whole_draft = (out[:, :2] == greedy).all(1).float().mean().item()
            assert 0.2 < departed_first < 0.8 and 0.05 < whole_draft < 0.8  # both branches, hundreds of rows
    for plain in (False, True):
        statistic, critical = chi_square(counts[plain], exact, n)
        assert statistic < critical, (plain, statistic, critical)
    hotter = exact_distribution(model, prompt, 3, 1.15)
    statistic, critical = chi_square(counts[False], hotter, n)
    assert statistic > critical


def test_the_three_samplers_of_rl_py_draw_from_the_same_distribution(monkeypatch):
    """rl.rollout with --sampler draft, cache and plain, 2000 completions of 3 tokens after one prompt each
    (500 for plain, a prompt at a time: 20 ms each): every sampler's counts fit the exact distribution
    enumerated from the model (and the test has power: the draft sampler's counts fail against temperature
    1.15's)."""
    import rl
    model = tiny_model(3)
    with torch.no_grad():
        model.wte.weight.mul_(6.0)  # a peaked distribution (few likely outcomes), tied to the head
    problem = task_problems(1, 1)[0]
    prompt = data.encode(data.prompt(problem))
    monkeypatch.setattr(generation, "generation_budget", lambda model, problems, width: 3)
    exact = exact_distribution(model, prompt, 3, 1.0)
    counts = {}
    for sampler in generation.SAMPLERS:
        n = 500 if sampler == "plain" else 2000
        prompts, sequences, _ = rl.rollout(model, [problem] * n, 1.0, torch.Generator().manual_seed(1),
                                           sampler=sampler)
        counts[sampler] = {}
        for row in map(tuple, new_tokens(sequences, prompts).tolist()):
            row = row + (data.PAD_ID,) * (3 - len(row))  # a finished row is padded
            counts[sampler][row] = counts[sampler].get(row, 0) + 1
        statistic, critical = chi_square(counts[sampler], exact, n)
        assert statistic < critical, (sampler, statistic, critical)
    statistic, critical = chi_square(counts["draft"], exact_distribution(model, prompt, 3, 1.15), 2000)
    assert statistic > critical


def test_a_task_without_a_correct_text_decodes_token_by_token(monkeypatch):
    model, problems = tiny_model(), task_problems(2, 2)
    budget = lambda model, problems, width: 120
    monkeypatch.setattr(generation, "generation_budget", budget)  # both read the target
    monkeypatch.setattr(data, "sequence_length", lambda problem: len(data.prompt(problem)))
    expected = generation.complete(model, problems, draft=False)
    monkeypatch.setattr(data, "target", lambda problem: None)
    assert data.draft_batch(problems) is None
    assert generation.complete(model, problems) == expected
