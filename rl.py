"""
RL fine-tuning of the pre-trained adder on longer numbers, with the prioritized KL penalty.

    python rl.py --alpha 3       # prioritized KL, the paper's idea (mild for add7.pt; 100 shows the effect)
    python rl.py --alpha 0       # the standard KL penalty
    python rl.py --kl-coef 0     # no penalty at all

The paper's idea is `rl_loss`, right below (Eq. 1 and 2); then what it calls, the rollout, the update and
the loop, `train` (comments marked "ranks:" are for torchrun's processes, each with a share of every batch).
The smallest complete version is tests/test_rl.py::test_a_tiny_model_learns_a_trivial_reward. Its choices
("the code" = the paper's code, the authors' repository; N = the checkpoint's pre-training digits):
 1. Rollout: --batch-size "N+k" problems (one operand of N+k digits, the other of 1..N+k), --group-size
    completions each, sampled at --temperature. A default run: 2048 / (16 x 4) = 32 iterations and steps.
 2. Reward at the end only: 1 for an exactly right answer line, else 0 (the paper; the code trains on +1/-1).
 3. Advantage: the reward minus the mean reward of its problem's group, the same for every token of the
    completion; no division by the group's std, no critic (the code: A2C with a critic and GAE).
 4. Loss = policy gradient + kl_coef x KL penalty: the KL sits in the loss, not in the reward (the paper's
    L = L_RL + kl_coef L_KL); a mean over every generated token of the batch (long texts weigh more).
 5. The KL per state is k2 = (log pi(a) - log pi_ref(a))^2 / 2 on the sampled token a (the code's), whose
    gradient is that of KL(pi || pi_ref); --kl-estimator full is the exact KL over the 42-token vocabulary.
 6. Its weight J_ref(s)^alpha (kl_weight) comes from the frozen reference, without gradient; J is Eq. 2's
    normalised negentropy (the code: --certainty maxprob --certainty-temperature 4, exponent 150).
 7. Policy and reference log-probs use softmax(logits / temperature), the distribution sampled: on-policy.
 8. One AdamW step per batch (lr 1e-4; the code 1e-6 over 400 episodes); --algo ppo reuses the batch for
    --ppo-epochs clipped epochs. No entropy bonus (the code 0.001).
Logs: a row of metrics.jsonl per evaluation (lab/metrics.py), of train.jsonl per iteration (all rl_loss
returns, and the KL split: the exact KL where pi_ref is unsure by the run's own J, J < 0.95 or the batch's
lowest tenth of J, and elsewhere, and at the paper's critical commas).
"""
import argparse
import os
import random
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from lab import generation
from lab import metrics
from lab import run_folder
from lab.files import release_locks
from model import load_for_fine_tuning
from lab.ranks import end_ranks, rank_share, start_ranks, sum_gradients
from lab.console import kills_stop_like_ctrl_c, resume_command, run_script
from lab.runtime import (add_number, add_runtime_flags, autocast_dtype, generation_dtype, mixed_precision,
                         pick_device, seed_everything, set_threads)

# -----------------------------------------------------------------------------
# the paper's idea: the loss, then what it calls


def rl_loss(logits, ref_logits, actions, advantages, mask, args, old_logp=None):
    """Policy gradient plus the prioritized KL penalty, averaged over generated tokens:

        L    = L_RL + kl_coef * E_{s,a ~ pi} [ J_ref(s)^alpha * KL_s ]          (Eq. 1)
        J_ref(s) = (H_max - H(pi_ref(.|s))) / H_max,   H_max = log|V|          (Eq. 2)

    alpha = 0 gives weight 1 everywhere: the standard KL penalty. The weight is computed from the frozen
    reference, without gradient, so the penalty shrinks where the pre-trained model was unsure (J^alpha < 1).

    logits, ref_logits (B, T, V): policy (with grad) and reference (no grad) at the visited states;
    actions (B, T) the sampled tokens; advantages (B,) one per completion; mask (B, T) 1 on generated
    tokens; args: the run's flags (rl.py's `flags()`, or `args_with()` outside a run: kl_coef,
    temperature, kl_estimator, clip, and what `certainty` and `kl_weight` read); old_logp (B, T): the
    rollout policy's log-probs for PPO, None for plain policy gradient. Returns the loss and a dict of the
    (detached) quantities it used, each a mean over generated tokens.
    """
    if args.kl_estimator == "k1" and args.kl_coef > 0:
        raise ValueError(K1_HAS_NO_GRADIENT)
    logp_all = F.log_softmax(logits.float() / args.temperature, dim=-1)
    ref_logp_all = F.log_softmax(ref_logits.float() / args.temperature, dim=-1)

    # Eq. 2 then Eq. 1: weight each state's KL by the reference's certainty to the power alpha
    with torch.no_grad():
        weight = kl_weight(certainty(ref_logits, args.certainty, args.certainty_temperature), args)
    kl = kl_estimate(logp_all, ref_logp_all, actions, args.kl_estimator)

    # L_RL: REINFORCE, or PPO's clipped surrogate when the batch is reused
    logp = logprob_of(logp_all, actions)
    adv = advantages[:, None]
    if old_logp is None:
        policy_term = -adv * logp
    else:
        ratio = torch.exp(logp - old_logp)
        policy_term = -torch.min(ratio * adv, ratio.clamp(1 - args.clip, 1 + args.clip) * adv)
    per_token = policy_term + args.kl_coef * weight * kl
    loss = masked_mean(per_token, mask)

    stats = {"policy_loss": policy_term, "kl": kl, "kl_weighted": weight * kl, "kl_weight": weight,
             "entropy": -(logp_all.exp() * logp_all).sum(-1)}  # the policy's entropy on the sampled states
    if old_logp is not None:  # how far this epoch has moved from the rollout policy
        stats["clip_fraction"] = ((ratio - 1).abs() > args.clip).float()
        stats["approx_kl"] = ratio - 1 - torch.log(ratio)  # k3 estimate of KL(pi_old || pi)
    return loss, {name: masked_mean(value.detach(), mask).item() for name, value in stats.items()}


K1_HAS_NO_GRADIENT = ("the k1 estimator has zero expected gradient, so the penalty would do nothing: use k2 "
                      "(the paper's), k3 or full")


def kl_weight(certainty, args):
    """Eq. 1's weight of a state's KL term, from the reference's certainty J (tensor or float) and the run's
    flags: J^alpha (alpha = 0: the standard penalty). The one place the weighting is chosen: the loss, the
    printout before training, analyze.py probe's table and analyze.is_uniform all call it, so a fork that
    weights otherwise (tests/test_forks.py: a threshold with its own flag) edits this and flags()."""
    return certainty ** args.alpha


def certainty(logits, kind="entropy", temperature=1.0):
    """How sure a distribution softmax(logits / temperature) is, in [0, 1] (1 = one-hot, 0 = uniform).

    entropy (Eq. 2):  J = 1 - H(p) / log|V|          normalised negentropy
    maxprob:          J = 1 + log(max_a p(a)) / log|V|   the paper's code's min-entropy variant
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    h_max = torch.log(torch.tensor(float(logits.size(-1))))
    if kind == "entropy":
        entropy = -(logp.exp() * logp).sum(-1)
        return (1 - entropy / h_max).clamp(0.0, 1.0)
    if kind == "maxprob":
        return (1 + logp.max(-1).values / h_max).clamp(0.0, 1.0)
    raise ValueError(f"unknown certainty kind {kind!r}: use entropy or maxprob")


def kl_estimate(logp_all, ref_logp_all, actions, estimator="k2"):
    """Per-state estimate of KL(pi || pi_ref) from the sampled token a ~ pi, l = log pi(a) - log pi_ref(a).
    In a loss the sampling itself carries no gradient, so what an estimator pulls toward is E_pi[grad k]:

    k1 = l               unbiased value; expected gradient zero: no pull at all (refused in rl_loss)
    k2 = l^2 / 2         biased value; expected gradient = grad KL(pi || pi_ref): the paper's choice
    k3 = e^-l - 1 + l    unbiased value, always >= 0; expected gradient = grad KL(pi_ref || pi), the other KL
    full = sum_a pi(a) (log pi(a) - log pi_ref(a)): exact value and gradient of KL(pi || pi_ref) (cheap with
           a 42-token vocabulary)
    (tests/test_rl.py checks each by enumerating a small vocabulary)
    """
    if estimator == "full":
        return (logp_all.exp() * (logp_all - ref_logp_all)).sum(-1)
    l = logprob_of(logp_all - ref_logp_all, actions)
    if estimator == "k1":
        return l
    if estimator == "k2":
        return 0.5 * l ** 2
    if estimator == "k3":
        return torch.exp(-l) - 1 + l
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1, k2, k3 or full")


def masked_mean(values, mask):
    """The mean of values (B, T) over the generated tokens (mask 1)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def logprob_of(logp_all, actions):
    """The log-probabilities (B, T) of the tokens actually taken, from all of them (B, T, V)."""
    return logp_all.gather(-1, actions[..., None]).squeeze(-1)


def group_advantages(rewards, group_size):
    """Reward minus the mean reward of the completions sampled for the same problem (rows grouped)."""
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(1, keepdim=True)).view(-1)


# -----------------------------------------------------------------------------
# one iteration: rollout, then the update


@torch.no_grad()
def rollout(policy, problems, temperature, generator, sampler="draft"):
    """Sample one completion per problem. Returns (prompts, sequences, completions): the left-padded prompts,
    the prompts followed by the tokens sampled, and those as text. sampler: --sampler's choice."""
    device = next(policy.parameters()).device
    prompts = data.prompt_batch(problems, device)
    budget = generation.generation_budget(policy, problems, prompts.size(1))
    if sampler == "plain":  # nanoGPT's plain loop, a problem at a time: the one to read
        sequences = policy.sample_plainly(prompts, budget, temperature, generator, data.Stop)
    else:  # the speed paths, sampling the same distribution (tests/test_draft.py, test_model.py): a KV cache
        # ("cache"), and ("draft", the default) the correct text as a free draft (one pass checks every
        # position; only the rows that leave it go on token by token)
        guess = data.draft_batch(problems, device) if sampler == "draft" else None
        sequences = policy.generate(prompts, budget, temperature=temperature, generator=generator, fast=True,
                                    stop=data.Stop, draft=guess)
    completions = [data.decode(row) for row in sequences[:, prompts.size(1):].tolist()]
    return prompts, sequences, completions


def update(policy, reference, optimizer, batch, advantages, args, dtype, ranks=1):
    """The teacher-forced passes and the gradient step(s) on one rollout: one (REINFORCE) or --ppo-epochs
    (PPO). Returns the last step's rl_loss terms with the loss and the gradient norm before clipping, and
    the logits of the policy (before its last step) and of the reference, for `moved`; FloatingPointError
    if the loss or norm is not finite. ranks: each one's loss is the mean over its own tokens."""
    inputs, actions, mask = batch
    device = inputs.device.type
    with torch.no_grad(), mixed_precision(device, dtype):
        ref_logits, _ = reference(inputs)
    old_logp = None
    for epoch in range(args.ppo_epochs if args.algo == "ppo" else 1):
        with mixed_precision(device, dtype):
            logits, _ = policy(inputs)
        if args.algo == "ppo" and epoch == 0:  # the rollout policy is the policy before this batch's updates
            old_logp = logprob_of(F.log_softmax(logits.detach().float() / args.temperature, dim=-1), actions)
        loss, stats = rl_loss(logits, ref_logits, actions, advantages, mask, args, old_logp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sum_gradients(policy, divide_by=ranks)  # ranks: the mean over processes (nothing when alone)
        norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip or float("inf"))
        if not (torch.isfinite(loss) and torch.isfinite(norm)):  # stop before the weights are ruined
            raise FloatingPointError(metrics.not_finite(loss, norm, stats, logits))
        optimizer.step()
    return {**stats, "loss": loss.item(), "grad_norm": norm.item()}, logits, ref_logits


@torch.no_grad()
def moved(logits, ref_logits, mask, args, critical):
    """Where the policy moved from the reference (for the log, whatever the loss uses): the exact KL split
    by the reference's certainty J as this run's weight sees it, and at the paper's critical commas
    (critical: data.critical_states of the batch); metrics.kl_split says each key."""
    ref_certainty = certainty(ref_logits, args.certainty, args.certainty_temperature)
    weight = kl_weight(ref_certainty, args)
    logp_all, ref_logp_all = (F.log_softmax(x.float() / args.temperature, dim=-1)
                              for x in (logits, ref_logits))
    exact = kl_estimate(logp_all, ref_logp_all, None, "full")  # whichever estimator the loss uses
    return metrics.kl_split(exact, mask, ref_certainty, weight, critical)


# -----------------------------------------------------------------------------
# the run


def flags():
    """rl.py's command line; a fork adds its flag here (rl_loss and kl_weight read it as args.NAME)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paper = p.add_argument_group("the paper's penalty (Eq. 1 and 2)")
    add_number(paper, "--alpha", float, 3.0, "exponent of the certainty weight (0: standard KL)", at_least=0)
    add_number(paper, "--kl-coef", float, 10.0, "weight of the KL penalty (0: none; default 10)", at_least=0,
               at_most=1e6)
    core = p.add_argument_group("RL")
    core.add_argument("--ckpt", default="checkpoints/add7.pt", help="pre-trained model: start and reference")
    add_number(core, "--digits-plus", int, 1, "k: train on the 'N+k' distribution (default 1)", at_least=1,
               at_most=100)
    add_number(core, "--episodes", int, 2048, "completions sampled in all (default 2048)", at_least=1,
               at_most=10_000_000)
    add_number(core, "--batch-size", int, 16, "problems per iteration (default 16)", at_least=1,
               at_most=65_536)
    add_number(core, "--group-size", int, 4, "completions per problem, at least 2 (default 4)", at_least=2,
               message="--group-size must be at least 2: the advantage subtracts the group's mean, so a "
               "group of one learns nothing")
    add_number(core, "--temperature", float, 1.0, "sampling temperature of the policy, at least 0.01",
               at_least=0.01, message="--temperature must be positive, at least 0.01 (logits / T overflows)")
    add_number(core, "--lr", float, 1e-4, "AdamW learning rate (AdamW overflows past 1e30)", above=0,
               at_most=1e30)
    add_number(core, "--grad-clip", float, 1.0, "clip the gradient norm to this (0: off)", at_least=0)
    variants = p.add_argument_group("variants (the paper's code's, and other choices)")
    variants.add_argument("--algo", default="reinforce", choices=["reinforce", "ppo"], help="policy gradient")
    add_number(variants, "--ppo-epochs", int, 2, "epochs per batch with --algo ppo, 1 to 100", at_least=1,
               at_most=100)
    add_number(variants, "--clip", float, 0.2, "PPO ratio clip, in (0, 1)", above=0, below=1,
               message="PPO's ratio clip needs --clip in (0, 1)")
    variants.add_argument("--kl-estimator", default="k2", choices=["k1", "k2", "k3", "full"],
                          help="per-state KL; its gradient follows k2: KL(pi||ref) (the paper's), "
                               "k3: KL(ref||pi), full: KL(pi||ref) exactly; k1: none (refused)")
    variants.add_argument("--certainty", default="entropy", choices=["entropy", "maxprob"],
                          help="Eq. 2, or the paper's code's variant")
    add_number(variants, "--certainty-temperature", float, 1.0, "reference temperature for the certainty",
               at_least=0.01, message="--certainty-temperature must be positive, at least 0.01")
    run = p.add_argument_group("the run")
    add_number(run, "--eval-every", int, 512, "episodes between evaluations (default 512)", at_least=1,
               at_most=10_000_000)
    add_number(run, "--eval-size", int, 200, "held-out problems per evaluation set (4 sets)", at_least=1,
               at_most=10_000)
    add_number(run, "--seed", int, 0, "seeds Python's and torch's generators", at_least=0, at_most=2**63 - 1)
    add_runtime_flags(run)
    run.add_argument("--sampler", default="draft", choices=list(generation.SAMPLERS),
                     help="how completions are drawn, all from the same distribution: draft (default: a KV "
                          "cache along the correct text, token by token only where a row leaves it, 2-3x "
                          "faster), cache (a KV cache, token by token), plain (model.GPT.sample_plainly, "
                          "nanoGPT's loop, a problem at a time: the one to read)")
    run_folder.add_folder_flags(run)
    return p


def get_args(argv=None):
    p = flags()
    args = p.parse_args(argv)
    # rules between flags
    per_iteration = args.batch_size * args.group_size
    if per_iteration > 65_536:
        p.error("--batch-size x --group-size must be at most 65536 completions per iteration")
    if args.episodes % per_iteration:
        closest = max(1, round(args.episodes / per_iteration)) * per_iteration
        p.error(f"--episodes must be a multiple of --batch-size x --group-size = {per_iteration} (one "
                f"iteration samples that many), e.g. {closest}")
    if args.kl_estimator == "k1" and args.kl_coef > 0:
        p.error("--kl-estimator k1: " + K1_HAS_NO_GRADIENT)
    if args.name is not None and (os.path.basename(args.name) != args.name or args.name in ("", ".", "..")):
        p.error("--name must be a plain folder name (no '/', not '..'): the run goes to --out/--name")
    now = time.strftime("%Y%m%d-%H%M%S")
    args.name = args.name or f"alpha{args.alpha:g}_kl{args.kl_coef:g}_seed{args.seed}_{now}"
    return args


def main(argv=None):
    args = get_args(argv)
    run_dir = os.path.join(args.out, args.name)
    argv = sys.argv[1:] if argv is None else argv
    go_on = resume_command("rl.py", argv, args.name)
    try:
        with kills_stop_like_ctrl_c():  # SIGTERM and SIGHUP too
            run = set_up(args)  # device, processes, models, optimizer, the run folder and the random streams
            train(run, args)
            run_folder.finish_run(run)
        end_ranks()
    except run_folder.OtherProcessCount as e:  # the command with the run's own process count
        sys.exit(f"{e.code}; to go on: {resume_command('rl.py', argv, args.name, e.ranks)}")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted: {run_dir} keeps the run up to its last evaluation; to go on: {go_on}")
    except FloatingPointError as e:
        sys.exit(f"error: {e}; {run_dir} keeps the run up to its last evaluation")
    finally:
        release_locks()  # the run folder is free for the next writer


def train(run, args):
    """The algorithm, iteration after iteration, from the run's first (or, resumed, next) iteration. `run` is
    the run's state (set_up: models, optimizer, random streams, folder); `args` its flags."""
    window = metrics.training_window()  # bookkeeping: the training terms that the next evaluation averages
    no_reward = 0  # bookkeeping: iterations in a row whose completions all earned nothing
    bar = tqdm(range(run.first_iteration, run.iterations), initial=run.first_iteration, total=run.iterations,
               desc="rl", dynamic_ncols=True, disable=run.rank > 0)
    for it in bar:
        # 1. sample: group_size completions of each of batch_size "N+k" problems
        problems = draw_problems(run.rng, run.n, args)
        problems = rank_share(problems, run.rank, run.ranks)  # ranks: each process a share of the groups
        with mixed_precision(run.device, run.gen_dtype):
            prompts, sequences, completions = rollout(run.policy, problems, args.temperature, run.generator,
                                                      args.sampler)
        # 2. reward: 1 for a right answer line, else 0
        rewards = torch.tensor([data.reward(problem, text) for problem, text in zip(problems, completions)],
                               device=prompts.device)
        # 3. advantages: each reward minus its group's mean
        advantages = group_advantages(rewards, args.group_size)
        # 4. the loss (rl_loss) and the gradient step, on the tokens sampled
        inputs, actions, mask = data.generated_batch(prompts, sequences)
        stats, logits, ref_logits = update(run.policy, run.reference, run.optimizer, (inputs, actions, mask),
                                           advantages, args, run.dtype, run.ranks)
        # 5. log every iteration to train.jsonl: the loss's terms and where the policy moved
        stats.update(moved(logits, ref_logits, mask, args, data.critical_states(problems, actions, run.n)))
        stats = run_folder.log_iteration(run, it, rewards, mask, stats, window)
        bar.set_postfix(reward=f"{stats['reward']:.2f}", kl=f"{stats['kl']:.4f}")
        no_reward = metrics.warn_if_nothing_to_learn(no_reward, stats["reward"], run.rank)
        # 6. evaluate every --eval-every episodes and at the end (and save the state --resume needs)
        if metrics.evaluation_due(it, run.per_iteration, run.iterations, args.eval_every):
            metrics.evaluate_and_save(run, it + 1, window)
            window = metrics.training_window()


def set_up(args):
    """All a run holds, as one namespace (device, torchrun's rank and ranks, models, optimizer, folder, sets,
    random streams); a new run is evaluated before training, a resumed one put back at its last evaluation."""
    set_threads(args.threads)
    rank, ranks, device = start_ranks(pick_device(args.device))
    if args.batch_size % ranks:
        sys.exit(f"error: --batch-size {args.batch_size} does not split over {ranks} processes; use a "
                 f"multiple of {ranks}")
    seed_everything(args.seed, device, args.deterministic)
    policy, reference, n, meta = load_for_fine_tuning(args.ckpt, device, args.digits_plus,
                                                      args.batch_size * args.group_size)  # no dropout
    dtype, gen_dtype = autocast_dtype(args.dtype, device), generation_dtype(args.dtype, device)
    config = run_folder.config_of(args, n, device, (dtype, gen_dtype), ranks)
    try:  # the held-out sets: choose on val_plus, report acc_plus
        sets = data.rl_eval_sets(n, args.digits_plus, args.eval_size)
    except ValueError as e:  # a size the task cannot meet
        sys.exit(f"error: {e}; lower --eval-size")
    run_dir, state, rows = run_folder.prepare(args, config, rank, vars(args_with()))
    run = SimpleNamespace(
        args=args, rank=rank, ranks=ranks, device=device, dtype=dtype, gen_dtype=gen_dtype, policy=policy,
        reference=reference, n=n, meta=meta, dir=run_dir, rows=rows, identity=run_folder.identity(config),
        optimizer=torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0),
        sets=sets,
        rng=random.Random(args.seed),  # the problem stream, the same on every rank
        generator=torch.Generator(device).manual_seed(args.seed + rank),  # sampling noise: each rank its own
        per_iteration=args.batch_size * args.group_size, first_iteration=0,
        certainty_of=lambda logits: certainty(logits, args.certainty, args.certainty_temperature),
        weight_of=lambda j: kl_weight(j, args),  # the weights at first errors, printed at evaluation 0
        t0=time.time() - 60 * (state["minutes"] if state else 0.0))
    run.iterations = args.episodes // run.per_iteration
    if state:  # --resume: back to the last evaluation, where the state was saved
        run.first_iteration = run_folder.restore_state(state, policy, run.optimizer, run.rng, run.generator,
                                                       rank, ranks)
        tqdm.write(f"resuming {run_dir} at episode {state['episode']}")
    else:
        metrics.evaluate_and_save(run, 0, None)
    return run


def draw_problems(rng, n, args):  # batch_size "N+k" problems, each group_size times in a row (a group)
    return [p for p in (data.rl_problem(n, args.digits_plus, rng) for _ in range(args.batch_size))
            for _ in range(args.group_size)]


def args_with(**overrides):
    """rl.py's flags at their defaults, with overrides: a run's flags outside a run (tests, lab/curves.py)."""
    args = get_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


if __name__ == "__main__":
    run_script(main)
