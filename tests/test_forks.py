"""Two forks of rl.py as worked examples, each a change to rl.py alone (plus a line in rl.flags), plugged in
here the way a fork would edit them:
  - another KL weighting with a flag of its own: weight 0 where the reference's certainty J is below a
    threshold tau, 1 elsewhere (--kl-threshold tau; unset: the paper's J^alpha). It replaces rl.kl_weight;
    the loss, the weights rl.py prints and logs, analyze.py probe's table and analyze.is_uniform all follow,
    and runs made before the flag existed still group with new runs at its default;
  - an entropy bonus (--entropy-coef c): one term more in rl_loss, L - c * mean entropy of the policy.
(tests/test_task.py plugs another task into data.py's interface, and tests/test_fork_subtraction.py edits
data.py itself.) A student who has made one of these forks for real keeps these tests green: the flag is
added only if rl.flags lacks it, and the bonus only if rl_loss does not already give it.)"""
import json

import pytest
import torch

from lab import curves
import analyze
import rl
from lab.run_logs import read_run

ORIGINAL_FLAGS = rl.flags


def with_flag(parser, flag, **how):
    """parser with `flag` added, unless the fork already has it."""
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **how)
    return parser


def threshold_flags():
    return with_flag(ORIGINAL_FLAGS(), "--kl-threshold", type=float, default=None,
                     help="weight 0 where pi_ref's certainty is below this, 1 elsewhere (default: J^alpha)")


def threshold_weight(certainty, args):
    if args.kl_threshold is None:
        return certainty ** args.alpha
    return (certainty >= args.kl_threshold) * 1.0


def entropy_flags():
    return with_flag(ORIGINAL_FLAGS(), "--entropy-coef", type=float, default=0.0,
                     help="weight of the entropy bonus (default 0)")


ORIGINAL_LOSS = rl.rl_loss


def loss_with_entropy_bonus(logits, ref_logits, actions, advantages, mask, args, old_logp=None):
    """In a fork: one line at the end of rl_loss, loss = loss - args.entropy_coef * (mean entropy)."""
    loss, stats = ORIGINAL_LOSS(logits, ref_logits, actions, advantages, mask, args, old_logp)
    logp = torch.log_softmax(logits.float() / args.temperature, dim=-1)
    return loss - args.entropy_coef * rl.masked_mean(-(logp.exp() * logp).sum(-1), mask), stats


@pytest.fixture
def threshold_fork(monkeypatch):
    monkeypatch.setattr(rl, "flags", threshold_flags)
    monkeypatch.setattr(rl, "kl_weight", threshold_weight)


def toy_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    ref_logits = torch.randn(3, 5, 7) * torch.tensor([0.1, 3.0, 10.0])[:, None, None]  # unsure .. sure
    return logits, ref_logits, torch.randint(0, 7, (3, 5)), torch.tensor([1.0, -0.5, 0.2]), torch.ones(3, 5)


def test_the_loss_follows_the_forks_weighting(threshold_fork):
    logits, ref_logits, actions, advantages, mask = toy_batch()
    args = rl.args_with(kl_coef=1.0, kl_threshold=0.5)
    _, terms = rl.rl_loss(logits, ref_logits, actions, advantages, mask, args)
    expected = rl.masked_mean((rl.certainty(ref_logits) >= 0.5).float(), mask).item()
    assert terms["kl_weight"] == pytest.approx(expected) and 0 < expected < 1
    assert rl.get_args(["--kl-threshold", "0.9"]).kl_threshold == 0.9


def test_curves_call_a_threshold_weighting_uniform_only_where_it_is(threshold_fork):
    assert analyze.is_uniform({"alpha": 3.0, "kl_coef": 1.0, "kl_threshold": 1.5})  # 0 at every J
    assert not analyze.is_uniform({"alpha": 0.0, "kl_coef": 1.0, "kl_threshold": 0.5})
    assert analyze.is_uniform({"alpha": 0.0, "kl_coef": 1.0})  # an old run: the standard penalty


def test_a_run_with_the_fork_logs_its_weights_and_groups_with_old_runs(threshold_fork, tiny_checkpoint,
                                                                        tmp_path):
    common = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
              "--eval-every", "8", "--eval-size", "4", "--out", str(tmp_path), "--device", "cpu", "--threads",
              "1", "--no-save", "--alpha", "0"]
    rl.main([*common, "--name", "threshold", "--kl-threshold", "0.9"])
    steps = [json.loads(line) for line in open(tmp_path / "threshold" / "train.jsonl")]
    assert all(0.0 <= row["kl_weight"] <= 1.0 for row in steps)
    rl.main([*common, "--name", "plain"])  # the fork's flag left at its default: alpha 0, weight 1
    first = {name: json.loads(open(tmp_path / name / "metrics.jsonl").readline()) for name in ("threshold",
                                                                                             "plain")}
    # the untrained model is unsure where it first errs: below the threshold, weight 0
    assert first["threshold"]["weight_decisive"] == 0.0 and first["plain"]["weight_decisive"] == 1.0
    old = tmp_path / "old"  # a run made before the fork: its config has no kl_threshold
    old.mkdir()
    config = json.load(open(tmp_path / "plain" / "config.json"))
    del config["kl_threshold"]
    json.dump({**config, "seed": 1}, open(old / "config.json", "w"))
    (old / "metrics.jsonl").write_text(open(tmp_path / "plain" / "metrics.jsonl").read())
    groups = curves.group_runs([read_run(str(tmp_path / name)) for name in ("plain", "old")],
                               vars(rl.args_with()))
    assert len(groups) == 1 and len(groups[0][2]) == 2


def has_the_bonus_already():
    """Whether rl_loss itself reads --entropy-coef (a student's real fork)."""
    batch = toy_batch()
    plain, _ = ORIGINAL_LOSS(*batch, rl.args_with(kl_coef=1.0, entropy_coef=0.0))
    bonus, _ = ORIGINAL_LOSS(*batch, rl.args_with(kl_coef=1.0, entropy_coef=0.1))
    return plain.item() != bonus.item()


def test_an_entropy_bonus_fork_changes_the_loss_and_runs(monkeypatch, tiny_checkpoint, tmp_path):
    monkeypatch.setattr(rl, "flags", entropy_flags)
    if not has_the_bonus_already():
        monkeypatch.setattr(rl, "rl_loss", loss_with_entropy_bonus)
    logits, ref_logits, actions, advantages, mask = toy_batch()
    plain, stats = rl.rl_loss(logits, ref_logits, actions, advantages, mask, rl.args_with(kl_coef=1.0))
    bonus, _ = rl.rl_loss(logits, ref_logits, actions, advantages, mask, rl.args_with(kl_coef=1.0,
                                                                                     entropy_coef=0.1))
    # rel 1e-4: a fork that adds the bonus per token inside the mean sums in another order (float32)
    assert (plain - bonus).item() == pytest.approx(0.1 * stats["entropy"], rel=1e-4)
    rl.main(["--ckpt", tiny_checkpoint, "--episodes", "4", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--name", "bonus", "--device",
             "cpu", "--threads", "1", "--no-save", "--entropy-coef", "0.01"])
    config = json.load(open(tmp_path / "bonus" / "config.json"))
    assert config["entropy_coef"] == 0.01
