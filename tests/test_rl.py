import json
import math
import os
import shlex
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lab import metrics
import data
from conftest import addition_only, stop_after_saving, task_problems
import rl
from lab import run_folder
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = len(data.VOCAB)


def toy_batch(seed=0, B=3, T=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    ref_logits = torch.randn(B, T, V, generator=g) * 3
    actions = torch.randint(0, V, (B, T), generator=g)
    advantages = torch.randn(B, generator=g)
    mask = torch.ones(B, T)
    mask[0, :2] = 0  # a prompt
    mask[2, -1] = 0  # padding
    return logits, ref_logits, actions, advantages, mask


def test_certainty_on_known_distributions():
    one_hot = torch.full((V,), -1e4)
    one_hot[3] = 0.0
    uniform = torch.zeros(V)
    for kind in ("entropy", "maxprob"):
        assert rl.certainty(one_hot, kind).item() == pytest.approx(1.0, abs=1e-5)
        assert rl.certainty(uniform, kind).item() == pytest.approx(0.0, abs=1e-6)
    # two equally likely tokens: H = log 2, so J = 1 - log 2 / log |V| for both definitions
    two = torch.full((V,), -1e4)
    two[:2] = 0.0
    assert rl.certainty(two, "entropy").item() == pytest.approx(1 - math.log(2) / math.log(V), abs=1e-5)
    assert rl.certainty(two, "maxprob").item() == pytest.approx(1 - math.log(2) / math.log(V), abs=1e-5)
    # a higher temperature makes the same logits less certain
    logits = torch.randn(10, V) * 4
    assert (rl.certainty(logits, temperature=4.0) < rl.certainty(logits)).all()
    with pytest.raises(ValueError):
        rl.certainty(logits, "nonsense")


def test_alpha_zero_is_exactly_the_standard_penalty():
    logits, ref_logits, actions, advantages, mask = toy_batch()
    run = rl.args_with(kl_coef=0.7, alpha=0.0)
    loss, stats = rl.rl_loss(logits, ref_logits, actions, advantages, mask, run)
    logp = F.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
    ref_logp = F.log_softmax(ref_logits, -1).gather(-1, actions[..., None]).squeeze(-1)
    standard = (-advantages[:, None] * logp + 0.7 * 0.5 * (logp - ref_logp) ** 2)
    assert torch.allclose(loss, (standard * mask).sum() / mask.sum())
    assert stats["kl_weight"] == pytest.approx(1.0)


def test_weights_are_in_unit_interval_and_vanish_for_uniform_reference():
    logits, ref_logits, actions, advantages, mask = toy_batch()
    for alpha in (0.5, 3.0, 50.0):
        run = rl.args_with(kl_coef=1.0, alpha=alpha)
        _, stats = rl.rl_loss(logits, ref_logits, actions, advantages, mask, run)
        assert 0.0 < stats["kl_weight"] < 1.0
    uniform = torch.zeros_like(ref_logits)
    run = rl.args_with(kl_coef=5.0, alpha=3.0)
    loss_uniform, stats = rl.rl_loss(logits, uniform, actions, advantages, mask, run)
    run = rl.args_with(kl_coef=0.0, alpha=3.0)
    loss_no_kl, _ = rl.rl_loss(logits, uniform, actions, advantages, mask, run)
    assert stats["kl_weight"] == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(loss_uniform, loss_no_kl)  # the penalty is switched off where pi_ref is uniform
    one_hot = torch.full_like(ref_logits, -1e4).scatter(-1, actions[..., None], 0.0)
    _, stats = rl.rl_loss(logits, one_hot, actions, advantages, mask, rl.args_with(kl_coef=1.0, alpha=3.0))
    assert stats["kl_weight"] == pytest.approx(1.0, abs=1e-4)


def test_kl_coef_zero_is_plain_policy_gradient_and_masks_apply_once():
    logits, ref_logits, actions, advantages, mask = toy_batch()
    loss, _ = rl.rl_loss(logits, ref_logits, actions, advantages, mask, rl.args_with(kl_coef=0.0, alpha=3.0))
    logp = F.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
    assert torch.allclose(loss, (-advantages[:, None] * logp * mask).sum() / mask.sum())
    loss.backward()
    assert (logits.grad[0, :2] == 0).all() and (logits.grad[2, -1] == 0).all()  # prompt and padding
    assert (logits.grad[1] != 0).any()


def test_full_estimator_is_the_exact_kl():
    logits, ref_logits, actions, advantages, mask = toy_batch()
    p = F.softmax(logits, -1)
    exact = (p * (p.log() - F.log_softmax(ref_logits, -1))).sum(-1)
    est = rl.kl_estimate(F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1), actions, "full")
    assert torch.allclose(est, exact, atol=1e-6)
    assert (est >= -1e-6).all()


@pytest.mark.parametrize("estimator, unbiased_value, gradient_of", [
    ("k1", True, "nothing"), ("k2", False, "KL(pi || ref)"), ("k3", True, "KL(ref || pi)"),
    ("full", True, "KL(pi || ref)")])
def test_which_divergence_each_estimators_expected_gradient_follows(estimator, unbiased_value, gradient_of):
    """E_{a~pi}[k(a)] and E_{a~pi}[grad k(a)] computed exactly by enumerating a 5-token vocabulary."""
    torch.manual_seed(0)
    theta = torch.randn(V, requires_grad=True)
    ref_logp = F.log_softmax(torch.randn(V) * 2, -1)
    logp = F.log_softmax(theta, -1)
    reverse = (logp.exp() * (logp - ref_logp)).sum()  # KL(pi || ref), the paper's penalty
    forward = (ref_logp.exp() * (ref_logp - logp)).sum()  # KL(ref || pi)
    gradients = {"KL(pi || ref)": torch.autograd.grad(reverse, theta, retain_graph=True)[0],
                 "KL(ref || pi)": torch.autograd.grad(forward, theta,
                                                      retain_graph=True)[0], "nothing": torch.zeros(V)}
    actions = torch.arange(V)
    ks = rl.kl_estimate(logp.expand(V, V), ref_logp.expand(V, V), actions, estimator)
    weights = torch.ones(1) if estimator == "full" else logp.exp().detach()  # sampling carries no gradient
    expected = (weights * ks).sum() / (V if estimator == "full" else 1)
    (grad_est,) = torch.autograd.grad(expected, theta)
    if unbiased_value:
        assert expected.item() == pytest.approx(reverse.item(), rel=1e-4)
    for name, grad in gradients.items():  # it follows exactly one of the three
        assert torch.allclose(grad_est, grad, atol=1e-5) == (name == gradient_of), name


def test_k1_is_refused_in_the_loss():
    logits, ref_logits, actions, advantages, mask = toy_batch()
    run = rl.args_with(kl_coef=1.0, alpha=0.0, kl_estimator="k1")
    with pytest.raises(ValueError, match="zero expected gradient"):
        rl.rl_loss(logits, ref_logits, actions, advantages, mask, run)
    run.kl_coef = 0.0  # no penalty: nothing to refuse
    rl.rl_loss(logits, ref_logits, actions, advantages, mask, run)


def test_ppo_ratio_is_one_on_the_first_epoch():
    logits, ref_logits, actions, advantages, mask = toy_batch()
    old = F.log_softmax(logits.detach() / 2.0, -1).gather(-1, actions[..., None]).squeeze(-1)
    run = rl.args_with(kl_coef=0.3, alpha=1.0, temperature=2.0)
    ppo, _ = rl.rl_loss(logits, ref_logits, actions, advantages, mask, run, old_logp=old)
    (g_ppo,) = torch.autograd.grad(ppo, logits)
    plain, _ = rl.rl_loss(logits, ref_logits, actions, advantages, mask, run)
    (g_plain,) = torch.autograd.grad(plain, logits)
    assert torch.allclose(g_ppo, g_plain, atol=1e-6)  # ratio 1: same gradient as the policy gradient


def some_signal(problem, completion):
    """A reward that a tiny untrained model earns now and then, so that advantages are not all zero."""
    return float(len(completion) % 2)


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = rl.group_advantages(rewards, 4)
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]))


class Writer(GPT):
    """generate() appends fixed token lists (padded on the right), as GPT.generate returns them."""

    def __init__(self, texts):
        super().__init__(GPTConfig(block_size=256, n_layer=1, n_head=1, n_embd=8))
        self.texts = texts

    def generate(self, idx, max_new_tokens, temperature=1.0, generator=None, fast=True, stop=None,
                 draft=None):
        width = max(len(t) for t in self.texts)
        new = torch.tensor([data.encode(t) + [data.PAD_ID] * (width - len(t)) for t in self.texts])
        return torch.cat([idx, new], 1)


def test_rollout_batch_is_prompt_then_completion_with_the_generated_tokens_masked_in():
    problems = task_problems(2, 2)
    texts = [data.target(problems[0]), data.target(problems[1])[:3]]  # right, and a row that stopped early
    prompts, sequences, completions = rl.rollout(Writer(texts), problems, 1.0, None)
    assert completions == texts and [data.reward(p, c) for p, c in zip(problems, completions)] == [1.0, 0.0]
    inputs, actions, mask = data.generated_batch(prompts, sequences)  # as rl.train makes them
    for i, (problem, text) in enumerate(zip(problems, texts)):
        full = data.encode(data.prompt(problem) + text)
        p = len(data.prompt(problem))
        assert inputs[i, :len(full)].tolist() == full[:inputs.size(1)]  # from column 0: no left padding
        assert (inputs[i, len(full):] == data.PAD_ID).all()
        assert actions[i, p - 1:len(full) - 1].tolist() == full[p:]  # the generated tokens
        padding = mask.size(1) - p + 1 - len(text)
        assert mask[i].tolist() == [0.0] * (p - 1) + [1.0] * len(text) + [0.0] * padding


@addition_only
def test_critical_probability_reads_the_comma():
    class Oracle(GPT):
        """Always certain of ','."""
        def forward(self, idx, targets=None, offset=None):
            logits = torch.full((*idx.shape, V), -1e4)
            logits[..., data.STOI[","]] = 0.0
            return logits, None
    model = Oracle(GPTConfig(block_size=256, n_layer=1, n_head=1, n_embd=8))
    assert metrics.critical_probabilities(model, [(1234, 5678)], 3, 1.0, lines=(3,))[0] == pytest.approx(1.0)


def test_smoke_run_writes_metrics_and_checkpoint(tiny_checkpoint, tmp_path):
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "4", "--out", str(tmp_path), "--name", "smoke",
             "--algo", "ppo", "--device", "cpu"]
    r = subprocess.run([sys.executable, "rl.py", *flags], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "done: N+1 (3 digits) greedy accuracy" in r.stdout
    rows = [json.loads(line) for line in open(tmp_path / "smoke" / "metrics.jsonl")]
    assert [row["episode"] for row in rows] == [0, 4, 8]
    assert "weight_decisive" in rows[0] and "KL weight (rl.kl_weight)" in r.stdout
    for key in ("acc_plus", "val_plus", "acc_comfort", "acc_plus_sampled", "kl", "reward", "critical_p"):
        assert key in rows[-1]
    config = json.load(open(tmp_path / "smoke" / "config.json"))
    assert config["alpha"] == 3.0 and config["generation_dtype"] == "float32"  # --dtype auto
    assert (tmp_path / "smoke" / "model.pt").exists()


def test_an_existing_run_is_not_replaced_without_force(tiny_checkpoint, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    r = subprocess.run([sys.executable, "rl.py", "--ckpt", tiny_checkpoint, "--out", str(tmp_path), "--name",
                        "mine"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "already holds a run" in r.stderr and "--force" in r.stderr
    assert (run / "metrics.jsonl").read_text() == "{}\n" and not (run / "config.json").exists()


def test_a_diverging_run_stops_with_one_line_and_valid_logs(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(rl.data, "reward", some_signal)
    with pytest.raises(SystemExit) as e:
        rl.main(["--ckpt", tiny_checkpoint, "--episodes", "16", "--batch-size", "2", "--group-size", "2",
                 "--eval-every", "8", "--eval-size", "2", "--out", str(tmp_path), "--name", "nan",
                 "--lr", "1e30", "--grad-clip", "0", "--threads", "1", "--device", "cpu"])
    assert isinstance(e.value.code, str) and "not finite" in e.value.code and "\n" not in e.value.code
    # valid JSON: null, never NaN
    rows = [json.loads(line) for line in open(tmp_path / "nan" / "metrics.jsonl")]
    assert rows and not (tmp_path / "nan" / "model.pt").exists()


def test_an_interrupted_run_resumes_to_the_same_metrics(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(rl.data, "reward", some_signal)
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "16", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--threads", "1", "--no-save",
             "--device", "cpu"]
    rl.main([*flags, "--name", "whole"])
    save = run_folder.atomic_save  # the run's state is written by run_folder.save_state

    def save_then_stop(obj, path):  # Ctrl-C right after the evaluation at episode 8 was saved
        save(obj, path)
        if obj["episode"] == 8:
            raise KeyboardInterrupt
    monkeypatch.setattr(run_folder, "atomic_save", save_then_stop)
    with pytest.raises(SystemExit) as e:
        rl.main([*flags, "--name", "cut"])
    advice = e.value.code.split("to go on: ")[1]  # the exact command that goes on, as printed
    assert shlex.split(advice)[:2] == ["python", "rl.py"] and shlex.split(advice)[-1] == "--resume"
    monkeypatch.setattr(run_folder, "atomic_save", save)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:  # as if killed between a row and its state
        f.write(json.dumps({"episode": 12}) + "\n")
    with pytest.raises(SystemExit, match="other settings"):
        rl.main([*flags, "--name", "cut", "--resume", "--lr", "1e-3"])
    rl.main(shlex.split(advice)[2:])
    rows = lambda name: [{k: v for k, v in json.loads(line).items() if k != "minutes"}
                         for line in open(tmp_path / name / "metrics.jsonl")]
    assert [r["episode"] for r in rows("cut")] == [0, 4, 8, 12, 16] and rows("cut") == rows("whole")
    steps = lambda name: (tmp_path / name / "train.jsonl").read_text()
    assert steps("cut") == steps("whole")  # the iterations after the last save are cut, then written again
    assert not (tmp_path / "cut" / "state.pt").exists()  # a finished run keeps only its logs


def interrupt_after_saving(flags, episode):
    """rl.main(flags) stopped by a Ctrl-C right after the evaluation at `episode` was saved."""
    with pytest.MonkeyPatch.context() as patch:
        stop_after_saving(patch, episode)
        with pytest.raises(SystemExit):
            rl.main(flags)


def test_a_resume_keeps_the_sampler_the_run_was_made_with(tiny_checkpoint, tmp_path):
    """The samplers draw the same distribution but not the same numbers: --resume with another --sampler is
    refused, naming it. A run made before --sampler (config.json with --draft and --fast-generate) is read as
    the sampler those flags chose: "--no-draft" was the KV cache, token by token."""
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--threads", "1", "--no-save",
             "--device", "cpu", "--name", "cut"]
    interrupt_after_saving(flags, 4)
    with pytest.raises(SystemExit, match=r"--sampler draft \(now cache\)"):
        rl.main([*flags, "--resume", "--sampler", "cache"])
    config = json.load(open(tmp_path / "cut" / "config.json"))
    del config["sampler"]
    config.update(draft=False, fast_generate=True)  # as rl.py wrote it with --no-draft
    (tmp_path / "cut" / "config.json").write_text(json.dumps(config))
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    del state["identity"]["sampler"]  # nor did its state.pt record one
    torch.save(state, tmp_path / "cut" / "state.pt")
    with pytest.raises(SystemExit, match=r"--sampler cache \(now draft\)"):
        rl.main([*flags, "--resume"])
    rl.main([*flags, "--resume", "--sampler", "cache"])
    assert [json.loads(line)["episode"] for line in open(tmp_path / "cut" / "metrics.jsonl")] == [0, 4, 8]


def test_a_tiny_model_learns_a_trivial_reward():
    """Reward = the first generated token is '7'; a few policy-gradient steps must raise its probability."""
    torch.manual_seed(0)
    policy = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16))
    reference = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16))
    reference.load_state_dict(policy.state_dict())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    prompts = data.prompt_batch(task_problems(1, 1) * 32)
    seven = data.STOI["7"]

    def p_seven():
        with torch.no_grad():
            return F.softmax(policy(prompts[:1])[0][0, -1], -1)[seven].item()

    before = p_seven()
    mask = torch.zeros(32, prompts.size(1))
    mask[:, -1] = 1.0  # the loss on the generated token only
    for _ in range(30):
        seq = policy.generate(prompts, 1, temperature=1.0, stop=data.Stop)
        rewards = (seq[:, -1] == seven).float()
        adv = rl.group_advantages(rewards, 32)
        logits, _ = policy(seq[:, :-1])
        with torch.no_grad():
            ref_logits, _ = reference(seq[:, :-1])
        loss, _ = rl.rl_loss(logits, ref_logits, seq[:, 1:], adv, mask, rl.args_with(kl_coef=0.01, alpha=1.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert p_seven() > 0.5 > before


@addition_only
def test_certainty_at_errors_separates_the_decisive_state(monkeypatch):
    """A reference that is sure of every character but one: J^alpha is 0 at that state, 1 elsewhere."""
    a, b = 1234, 5678
    text = data.scratchpad(a, b)
    wrong = text.index("A->")  # the reference writes a wrong character here
    start = len(data.prompt((a, b))) - 1

    class Reference(GPT):
        def forward(self, idx, targets=None, offset=None):
            logits = torch.full((*idx.shape, V), -1e4)
            logits[..., 0] = 0.0
            logits[:, start + wrong] = 0.0  # uniform: no certainty at the decisive state
            return logits, None
    reference = Reference(GPTConfig(block_size=256, n_layer=1, n_head=1, n_embd=8))
    decisive, elsewhere = metrics.certainty_at_errors(reference, [(a, b)], [text[:wrong] + "B"], rl.certainty)
    assert len(decisive) == 1 and len(elsewhere) == wrong
    weight = {alpha: lambda j, alpha=alpha: rl.kl_weight(j, rl.args_with(alpha=alpha)) for alpha in (0, 3)}
    assert metrics.mean_weight(decisive, weight[3]) == pytest.approx(0.0, abs=1e-6)
    assert metrics.mean_weight(elsewhere, weight[3]) == pytest.approx(1.0, abs=1e-4)
    assert metrics.mean_weight(decisive, weight[0]) == 1.0 and metrics.mean_weight([], weight[3]) is None


@addition_only
def test_critical_probabilities_read_every_position_in_one_copy():
    """The batched read gives what reading each critical position on its own gives."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, n_layer=1, n_head=2, n_embd=16)).eval()
    problems = [(1234, 5678), (9999, 1), (4321, 87)]
    got = metrics.critical_probabilities(model, problems, 3, 2.0, lines=(3, None))
    comma = [F.softmax(rows / 2.0, dim=-1)[:, data.STOI[","]] for rows in metrics.completion_logits(model,
                                                                                                    problems)]
    for limit, value in zip((3, None), got):
        one_by_one = [p[c].item() for p, problem in zip(comma,
                                                        problems) for c in data.critical_positions(problem, 3,
                                                                                                   limit)]
        assert len(one_by_one) > 0 and value == sum(one_by_one) / len(one_by_one)


def test_a_run_resumes_only_on_the_kind_of_device_it_started_on(tiny_checkpoint, tmp_path):
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--name", "moved",
             "--threads", "1", "--no-save", "--device", "cpu"]
    interrupt_after_saving(flags, 4)
    config = json.loads((tmp_path / "moved" / "config.json").read_text())
    (tmp_path / "moved" / "config.json").write_text(json.dumps({**config,
                                                                "device": "mps"}))  # as if made on a Mac
    with pytest.raises(SystemExit) as e:
        rl.main([*flags, "--resume"])
    assert "ran on mps" in e.value.code and "--device mps" in e.value.code and "\n" not in e.value.code


def test_every_term_of_the_loss_is_logged_each_iteration(tiny_checkpoint, tmp_path):
    rl.main(["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "8", "--eval-size", "2", "--out", str(tmp_path), "--name", "ppo",
             "--algo", "ppo", "--threads", "1", "--no-save", "--device", "cpu"])
    steps = [json.loads(line) for line in open(tmp_path / "ppo" / "train.jsonl")]
    _, terms = rl.rl_loss(*toy_batch(), rl.args_with(kl_coef=1.0, alpha=1.0), old_logp=torch.zeros(3, 5))
    assert [row["iteration"] for row in steps] == [1, 2] and [row["episode"] for row in steps] == [4, 8]
    for row in steps:
        assert set(terms) | {"loss", "grad_norm", "reward", "completion_length"} <= set(row)
        assert {"entropy", "clip_fraction", "approx_kl"} <= set(row) and 0 <= row["clip_fraction"] <= 1
    metrics_rows = [json.loads(line) for line in open(tmp_path / "ppo" / "metrics.jsonl")]
    assert metrics_rows[-1]["reward"] == pytest.approx(sum(r["reward"] for r in steps) / 2)
    for key in ("kl_uncertain", "kl_certain", "share_uncertain"):  # logged in both, whatever the penalty
        assert key in steps[0] and key in metrics_rows[-1]
    config = json.load(open(tmp_path / "ppo" / "config.json"))
    assert set(config["provenance"]) == {"commit", "threads", "machine", "torch"}
    assert config["provenance"]["threads"] == 1


def test_the_kl_split_is_the_exact_kl_on_each_side_of_the_certainty_cut():
    logits, ref_logits, _, _, mask = toy_batch()
    certainty = torch.full(mask.shape, 0.99)
    certainty[:, :2] = 0.5  # the first two states of every row are uncertain
    logp, ref = F.log_softmax(logits / 2.0, -1), F.log_softmax(ref_logits / 2.0, -1)
    kl = (logp.exp() * (logp - ref)).sum(-1)
    split = metrics.kl_split(rl.kl_estimate(logp, ref, None, "full"), mask, certainty)
    low = (certainty < metrics.UNCERTAIN).float() * mask
    assert split["kl_uncertain"] == pytest.approx(((kl * low).sum() / low.sum()).item())
    assert split["kl_certain"] == pytest.approx(((kl * (mask - low)).sum() / (mask - low).sum()).item())
    assert split["share_uncertain"] == pytest.approx((low.sum() / mask.sum()).item())
    assert metrics.kl_split(kl, mask, torch.ones(mask.shape))["kl_uncertain"] is None
    assert metrics.window_means({"a": [1.0, None, 3.0], "b": [None]}) == {"a": 2.0, "b": None}


def test_the_kl_split_by_the_lowest_tenth_and_at_the_critical_states():
    logits, ref_logits, _, _, mask = toy_batch()
    certainty = torch.rand(mask.shape, generator=torch.Generator().manual_seed(0))
    critical = torch.zeros(mask.shape)
    critical[0, 1] = critical[1, 2] = 1.0
    weight = certainty ** 3
    logp, ref = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    kl = (logp.exp() * (logp - ref)).sum(-1)
    split = metrics.kl_split(kl, mask, certainty, weight, critical)
    seen = sorted((certainty[i, t].item(), kl[i, t].item()) for i, t in mask.nonzero().tolist())
    k = max(1, round(metrics.LOW_SHARE * len(seen)))
    assert split["kl_low_j"] == pytest.approx(sum(v for _, v in seen[:k]) / k)
    assert split["kl_high_j"] == pytest.approx(sum(v for _, v in seen[k:]) / (len(seen) - k))
    assert split["j_low_cut"] == pytest.approx(seen[k - 1][0])
    assert split["kl_exact"] == pytest.approx(sum(v for _, v in seen) / len(seen))
    on = critical * mask
    assert split["critical_states"] == on.sum().item()
    assert split["kl_critical"] == pytest.approx(((kl * on).sum() / on.sum()).item())
    assert split["weight_critical"] == pytest.approx(((weight * on).sum() / on.sum()).item())


@addition_only
def test_critical_states_are_the_paper_commas_while_the_copy_is_right():
    problems = [(123456, 7), (123456, 7)]
    right = data.target(problems[0])
    comma = data.critical_positions(problems[0], 5)[0]  # line 1: the comma after the 5th digit of 123456
    wrong = right[:comma - 3] + "9" + right[comma - 2:]  # a digit before it miscopied
    prompts = data.prompt_batch(problems)
    texts = [data.prompt(p) + text for p, text in zip(problems, (right, wrong))]
    sequences = torch.tensor([data.encode(text) for text in texts])
    _, actions, mask = data.generated_batch(prompts, sequences)
    found = data.critical_states(problems, actions, 5)
    start = len(data.prompt(problems[0])) - 1
    commas = [start + c for c in data.critical_positions(problems[0], 5)]
    assert found[0].nonzero().flatten().tolist() == commas
    assert data.VOCAB[actions[0, start + comma].item()] == "," and mask[0, start + comma] == 1
    assert found[1].sum() == 0  # the text went wrong before the comma: not the paper's state


@addition_only
def test_the_paper_commas_one_by_one_average_to_their_mean():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, n_layer=1, n_head=2, n_embd=16)).eval()
    problems = data.eval_set("identical", 4, 5)  # every 4+4 problem has the six commas of lines 1-3 for N = 3
    places = {}
    paper, _ = metrics.critical_probabilities(model, problems, 3, 1.0, places=places)
    assert sorted(places) == [f"critical_p_line{j}_list{k}" for j in (1, 2, 3) for k in (1, 2)]
    assert sum(places.values()) / 6 == pytest.approx(paper)


def test_an_evaluation_shows_wrong_answers_and_where_they_went_wrong():
    problems = task_problems(3, 3)
    texts = [data.target(p) for p in problems]
    wrong = "X" if texts[1][5] != "X" else "Y"
    texts[1] = texts[1][:5] + wrong + texts[1][6:-2] + "\n"  # wrong early, and the answer line cut
    shown = metrics.mistakes(problems, texts)
    assert len(shown) == 1 and " ".join(data.prompt(problems[1]).split()) in shown[0]
    assert f"for {data.target(problems[1])[5]!r}" in shown[0] and "wrote" in shown[0] and "right" in shown[0]
