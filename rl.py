"""
RL fine-tuning of the pre-trained adder on longer numbers, with the prioritized KL penalty.

    python rl.py --alpha 3       # prioritized KL, the paper's idea (mild for add7.pt; 100 shows the effect)
    python rl.py --alpha 0       # the standard KL penalty
    python rl.py --kl-coef 0     # no penalty at all

The paper's idea is `rl_loss`, right below: the usual KL penalty to the frozen pre-trained model, each
state's term weighted by the reference's certainty to the power alpha (Eq. 1 and 2). Then, top-down: the
helpers it calls, rollouts, evaluation, the training loop (README: "Step 2").

One iteration: `--batch-size` problems from the 'N+k' distribution, `--group-size` completions each sampled
at `--temperature` with the KV cache, reward 1 for a right answer line, else 0; the advantage is the reward
minus its group's mean (REINFORCE with a group baseline, no critic), the same for every token; one gradient
step on the mean over generated tokens (`--algo ppo`: several clipped epochs per batch). Policy and KL use
softmax(logits / temperature), as sampling does, so the update is on-policy.
"""
import argparse
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import run_folder
from model import CheckpointError, load_checkpoint, save_checkpoint
from runtime import (DEVICE_HELP, DTYPE_HELP, DTYPES, autocast_dtype, generation_dtype, mixed_precision, pick_device,
                     precision_name, seed_everything, set_threads, too_big)

# -----------------------------------------------------------------------------
# the paper's idea: the loss, then what it calls


def rl_loss(logits, ref_logits, actions, advantages, mask, *, kl_coef, alpha, old_logp=None,
            temperature=1.0, kl_estimator="k2", certainty_kind="entropy", certainty_temperature=1.0,
            clip=0.2):
    """Policy gradient plus the prioritized KL penalty, averaged over generated tokens:

        L    = L_RL + kl_coef * E_{s,a ~ pi} [ J_ref(s)^alpha * KL_s ]          (Eq. 1)
        J_ref(s) = (H_max - H(pi_ref(.|s))) / H_max,   H_max = log|V|          (Eq. 2)

    alpha = 0 gives weight 1 everywhere: the standard KL penalty. The weight is computed from the frozen
    reference, without gradient, so the penalty vanishes where the pre-trained model was unsure.

    logits, ref_logits (B, T, V): policy (with grad) and reference (no grad) at the visited states;
    actions (B, T) the sampled tokens; advantages (B,) one per completion; mask (B, T) 1 on generated
    tokens; old_logp (B, T): the rollout policy's log-probs for PPO, None for plain policy gradient.
    Returns the loss and a dict of the (detached) quantities it used.
    """
    if kl_estimator == "k1" and kl_coef > 0:
        raise ValueError(K1_REFUSED)
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)
    ref_logp_all = F.log_softmax(ref_logits.float() / temperature, dim=-1)

    # Eq. 2 then Eq. 1: weight each state's KL by the reference's certainty to the power alpha
    with torch.no_grad():
        kl_weight = certainty(ref_logits, certainty_kind, certainty_temperature) ** alpha
    kl = kl_estimate(logp_all, ref_logp_all, actions, kl_estimator)

    # L_RL: REINFORCE, or PPO's clipped surrogate when the batch is reused
    logp = taken(logp_all, actions)
    adv = advantages[:, None]
    if old_logp is None:
        policy_term = -adv * logp
    else:
        ratio = torch.exp(logp - old_logp)
        policy_term = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    per_token = policy_term + kl_coef * kl_weight * kl

    tokens = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / tokens
    def mean(t):
        return ((t.detach() * mask).sum() / tokens).item()
    return loss, {"policy_loss": mean(policy_term), "kl": mean(kl), "kl_weighted": mean(kl_weight * kl),
                  "kl_weight": mean(kl_weight)}


K1_REFUSED = "the k1 estimator has zero expected gradient, so the penalty would do nothing: use k2 (the paper's), k3 or full"


def certainty(logits, kind="entropy", temperature=1.0):
    """How sure a distribution softmax(logits / temperature) is, in [0, 1] (1 = one-hot, 0 = uniform).

    entropy (Eq. 2):  J = 1 - H(p) / log|V|          normalised negentropy
    maxprob:          J = 1 + log(max_a p(a)) / log|V|   the official code's min-entropy variant
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
    l = taken(logp_all - ref_logp_all, actions)
    if estimator == "k1":
        return l
    if estimator == "k2":
        return 0.5 * l ** 2
    if estimator == "k3":
        return torch.exp(-l) - 1 + l
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1, k2, k3 or full")


def taken(logp_all, actions):
    """The log-probabilities (B, T) of the tokens actually taken, from all of them (B, T, V)."""
    return logp_all.gather(-1, actions[..., None]).squeeze(-1)


def token_log_probs(logits, actions, temperature):
    """log pi(a_t | s_t) of the taken tokens under softmax(logits / temperature), in float32."""
    return taken(F.log_softmax(logits.float() / temperature, dim=-1), actions)


def group_advantages(rewards, group_size):
    """Reward minus the mean reward of the completions sampled for the same problem (rows grouped)."""
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(1, keepdim=True)).view(-1)


# -----------------------------------------------------------------------------
# rollouts


@torch.no_grad()
def rollout(policy, problems, args, device, generator):
    """Sample one completion per problem. Returns (inputs, actions, mask, rewards) for the update: row i
    is problem i's prompt then its completion, padded on the right (so the teacher-forced passes need
    no padding mask and take attention's plain causal path); actions[:, t] is the token after
    inputs[:, t], and mask is 1 where that token was generated, 0 on the prompt and on padding."""
    prompts = data.prompt_batch(problems, device)
    sequences = policy.generate(prompts, data.generation_budget(policy, problems, prompts.size(1)),
                                temperature=args.temperature, generator=generator, fast=args.fast_generate,
                                stop=data.AnswerLineStop)
    completions = [data.decode(row) for row in sequences[:, prompts.size(1):].tolist()]
    rewards = torch.tensor([data.reward(c, a, b) for c, (a, b) in zip(completions, problems)], device=device)
    # move each row's left padding to its end (not data.make_batch from the decoded texts: decoding drops
    # a padding token that sampling can, rarely, emit mid-row, and the update must see the tokens sampled)
    lead = (prompts == data.PAD_ID).sum(1, keepdim=True)
    width = sequences.size(1)
    columns = torch.arange(width, device=device)[None, :] + lead
    sequences = sequences.gather(1, columns.clamp(max=width - 1)).masked_fill(columns >= width, data.PAD_ID)
    inputs, actions = sequences[:, :-1], sequences[:, 1:]
    generated = torch.arange(width - 1, device=device)[None, :] >= prompts.size(1) - lead - 1
    return inputs, actions, (generated & (actions != data.PAD_ID)).float(), rewards


# -----------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def completion_logits(model, problems, completions=None):
    """Teacher-forced logits (float) over each completion, by default the correct scratchpad: one
    (len(completion), V) tensor per problem, row c being the model's distribution for character c."""
    x, _ = data.make_batch(problems, next(model.parameters()).device, completions)
    logits, _ = model(x)
    texts = completions or [data.scratchpad(a, b) for a, b in problems]
    return [logits[i, len(data.prompt(a, b)) - 1:][:len(text)].float()  # x[t] predicts the character after it
            for i, ((a, b), text) in enumerate(zip(problems, texts))]


def critical_probabilities(model, problems, n, temperature, lines=(3, None)):
    """Mean probability (at the sampling temperature) of the correct ',' at the critical positions, with
    the correct text teacher-forced before it, i.e. while the copy is right (data.critical_positions);
    one value per entry of `lines`, all from one forward pass. 3 tracks the paper's positions (lines
    1-3); None every line, which matters here because our 7-digit model mostly fails on lines 5-6."""
    comma = [F.softmax(rows / temperature, dim=-1)[:, data.STOI[","]] for rows in completion_logits(model, problems)]
    means = []
    for limit in lines:
        at = [p[data.critical_positions(a, b, n, lines=limit)] for p, (a, b) in zip(comma, problems)]
        values = torch.cat(at).tolist()  # one copy from the device, not one per position
        means.append(sum(values) / max(1, len(values)))
    return means


def certainty_at_errors(reference, problems, kind="entropy", temperature=1.0, device="cpu", completions=None):
    """The reference's certainty J on its own greedy completions (generated here unless given): at the
    first wrong character of each failed completion (the state that decided the error), and at every
    character before it or in a correct completion. Two lists; `mean_weight` turns them into the weight
    J^alpha the penalty uses."""
    completions = completions or data.complete(reference, problems, device=device)
    decisive, elsewhere = [], []
    for (a, b), text, rows in zip(problems, completions, completion_logits(reference, problems)):
        J = certainty(rows, kind, temperature)  # on the correct scratchpad: the same states up to the error
        wrong = data.first_error(text, a, b)
        elsewhere += J[:wrong].tolist()  # wrong is None: the whole text
        if wrong is not None:
            decisive.append(J[wrong].item())
    return decisive, elsewhere


def mean_weight(certainties, alpha):
    """Mean of J^alpha, None for an empty list."""
    return sum(j ** alpha for j in certainties) / len(certainties) if certainties else None


def evaluate(policy, sets, args, n, device, dtype):
    """Greedy accuracy on N+k (the evaluation set, and the validation set that hyper-parameters are
    chosen on) and on the comfort zone, sampled accuracy on N+k, critical-token probability.
    Returns the metrics and the greedy N+k completions (the run's first evaluation reuses them)."""
    with mixed_precision(device, dtype):
        generator = torch.Generator(device).manual_seed(args.seed)
        paper_lines, all_lines = critical_probabilities(policy, sets["critical"], n, args.temperature)
        greedy = data.complete(policy, sets["plus"], device=device, fast=args.fast_generate)
        sampled = data.complete(policy, sets["plus"], temperature=args.temperature, device=device,
                                generator=generator, fast=args.fast_generate)
        comfort = data.complete(policy, sets["comfort"], device=device, fast=args.fast_generate)
        validation = data.complete(policy, sets["val"], device=device, fast=args.fast_generate)
    return {
        "acc_plus": data.percent_correct(greedy, sets["plus"]),
        "val_plus": data.percent_correct(validation, sets["val"]),
        "acc_comfort": data.percent_correct(comfort, sets["comfort"]),
        "acc_plus_sampled": data.percent_correct(sampled, sets["plus"]),
        "critical_p": paper_lines,
        "critical_p_all": all_lines,
    }, greedy


# -----------------------------------------------------------------------------
# the run


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paper = p.add_argument_group("the paper's penalty (Eq. 1 and 2)")
    paper.add_argument("--alpha", type=float, default=3.0, help="exponent of the certainty weight (0: standard KL)")
    paper.add_argument("--kl-coef", type=float, default=10.0,
                       help="weight of the KL penalty (0: none; default 10, where the standard penalty holds RL back)")
    core = p.add_argument_group("RL")
    core.add_argument("--ckpt", default="checkpoints/add7.pt", help="pre-trained model: start and frozen reference")
    core.add_argument("--digits-plus", type=int, default=1, help="k: train on the 'N+k' distribution (default 1)")
    core.add_argument("--episodes", type=int, default=2048, help="completions sampled in all (default 2048)")
    core.add_argument("--batch-size", type=int, default=16, help="problems per iteration (default 16)")
    core.add_argument("--group-size", type=int, default=4, help="completions per problem (default 4)")
    core.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the policy")
    core.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    core.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    variants = p.add_argument_group("variants (the official code's, and other choices)")
    variants.add_argument("--algo", default="reinforce", choices=["reinforce", "ppo"], help="policy-gradient flavour")
    variants.add_argument("--ppo-epochs", type=int, default=2, help="epochs per batch with --algo ppo")
    variants.add_argument("--clip", type=float, default=0.2, help="PPO ratio clip")
    variants.add_argument("--kl-estimator", default="k2", choices=["k1", "k2", "k3", "full"],
                          help="per-state KL; its gradient follows k2: KL(pi||ref) (the paper's), k3: KL(ref||pi), "
                               "full: KL(pi||ref) exactly; k1: none (refused)")
    variants.add_argument("--certainty", default="entropy", choices=["entropy", "maxprob"],
                          help="Eq. 2, or the official variant")
    variants.add_argument("--certainty-temperature", type=float, default=1.0,
                          help="reference temperature for the certainty")
    run = p.add_argument_group("the run")
    run.add_argument("--eval-every", type=int, default=512, help="episodes between evaluations (default 512)")
    run.add_argument("--eval-size", type=int, default=200, help="held-out problems per evaluation set")
    run.add_argument("--seed", type=int, default=0, help="seeds Python's and torch's generators")
    run.add_argument("--device", default="auto", help=DEVICE_HELP)
    run.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores; 1 per run when "
                     "runs share a machine)")
    run.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    run.add_argument("--fast-generate", action=argparse.BooleanOptionalAction, default=True,
                     help="GPT.generate's optimized loop (same tokens); --no-fast-generate: the plain reference loop")
    run.add_argument("--out", default="runs", help="folder for runs/<name>/")
    run.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                     help="write runs/<name>/model.pt at the end (--no-save: only the logs, for sweeps)")
    run.add_argument("--name", default=None, help="run name (default alpha<a>_kl<c>_seed<s>_<time>)")
    run.add_argument("--force", action="store_true", help="replace an existing run folder --out/--name")
    run.add_argument("--resume", action="store_true", help="continue the run --out/--name from its last evaluation "
                     "(same flags; the state is saved at every evaluation)")
    args = p.parse_args(argv)
    per_iteration = args.batch_size * args.group_size
    finite = [args.temperature, args.certainty_temperature, args.lr, args.kl_coef, args.alpha, args.clip, args.grad_clip]
    checks = [(all(math.isfinite(v) for v in finite), "--temperature, --certainty-temperature, --lr, --kl-coef, "
               "--alpha, --clip and --grad-clip must be finite numbers"),
              (args.digits_plus >= 1, "--digits-plus must be at least 1"),
              (args.episodes >= 1 and args.batch_size >= 1, "--episodes and --batch-size must be at least 1"),
              (args.group_size >= 2, "--group-size must be at least 2: the advantage is the reward minus the mean "
               "of its group, so a group of one learns nothing"),
              (per_iteration <= 65_536, "--batch-size x --group-size must be at most 65536 completions per iteration"),
              (args.episodes % per_iteration == 0, f"--episodes must be a multiple of --batch-size x --group-size = "
               f"{per_iteration} (one iteration samples that many), e.g. {max(1, round(args.episodes / per_iteration)) * per_iteration}"),
              (args.temperature >= 0.01, "--temperature must be positive, at least 0.01 (logits / T overflows below that)"),
              (args.certainty_temperature >= 0.01, "--certainty-temperature must be positive, at least 0.01"),
              (args.lr > 0, "--lr must be positive"),
              (args.kl_coef >= 0 and args.alpha >= 0 and args.grad_clip >= 0,
               "--kl-coef, --alpha and --grad-clip must be non-negative"),
              (args.kl_estimator != "k1" or args.kl_coef == 0, "--kl-estimator k1: " + K1_REFUSED),
              (args.ppo_epochs >= 1 and 0 < args.clip < 1, "--ppo-epochs must be >= 1 and --clip in (0, 1)"),
              (args.eval_every >= 1 and args.eval_size >= 1, "--eval-every and --eval-size must be at least 1"),
              (args.eval_size <= 100_000, "--eval-size must be at most 100000 (each evaluation generates 3 x that many texts)"),
              (args.threads is None or args.threads >= 1, "--threads must be at least 1"),
              (args.name is None or (args.name and os.path.basename(args.name) == args.name and args.name not in (".", "..")),
               "--name must be a plain folder name (no '/', not '..'): the run goes to --out/--name")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    args.name = args.name or f"alpha{args.alpha:g}_kl{args.kl_coef:g}_seed{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    return args


def one_line(row, digits_plus):
    """The progress line printed at each evaluation."""
    line = (f"episode {row['episode']} | N+{digits_plus} greedy {row['acc_plus']:.1f}% sampled "
            f"{row['acc_plus_sampled']:.1f}% | val {row['val_plus']:.1f}% | comfort {row['acc_comfort']:.1f}% | "
            f"critical p {row['critical_p']:.3f}")
    return line + (f" | reward {row['reward']:.3f} kl {row['kl']:.4f}" if row["reward"] is not None else "")


def main(argv=None):
    args = get_args(argv)
    set_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(args.seed, device)
    try:
        policy, meta = load_checkpoint(args.ckpt, device, with_meta=True)
        reference = load_checkpoint(args.ckpt, device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    n = meta.get("args", {}).get("digits")
    if not isinstance(n, int):
        sys.exit(f"error: {args.ckpt} does not record its pre-training digits; use a checkpoint made by pretrain.py")
    longest = data.longest_sequence(n + args.digits_plus)
    if longest > policy.config.block_size:
        sys.exit(f"error: {n + args.digits_plus}-digit problems need {longest} positions but {args.ckpt} has "
                 f"{policy.config.block_size}; lower --digits-plus")
    if message := too_big(policy.config, args.batch_size * args.group_size, longest, device):
        sys.exit(f"error: {message}; lower --batch-size or --group-size")
    reference.requires_grad_(False)
    dtype, gen_dtype = autocast_dtype(args.dtype, device), generation_dtype(args.dtype, device)  # update, sampling
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)

    recorded = {"pretrain_digits": n, "device": device, "training_dtype": precision_name(dtype),
                "generation_dtype": precision_name(gen_dtype)}  # what --dtype chose on this machine
    run_dir, state, rows = run_folder.prepare(args, {**vars(args), **recorded})
    sets = data.rl_eval_sets(n, args.digits_plus, args.eval_size)  # choose on val_plus, report acc_plus
    rng = random.Random(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    per_iteration = args.batch_size * args.group_size
    iterations = -(-args.episodes // per_iteration)

    t0 = time.time() - 60 * (state["minutes"] if state else 0.0)
    window = {"reward": [], "kl": [], "kl_weighted": [], "policy_loss": [], "kl_weight": []}

    def evaluation(episode):
        """The evaluation metrics and the training averages since the last one; and the greedy N+k texts."""
        policy.eval()
        metrics, greedy = evaluate(policy, sets, args, n, device, gen_dtype)
        policy.train()
        row = {"episode": episode, **metrics}
        row.update({k: (sum(v) / len(v) if v else None) for k, v in window.items()})
        row["minutes"] = round((time.time() - t0) / 60, 2)
        for v in window.values():
            v.clear()
        return row, greedy

    def log(row, iteration):
        """Append the row to metrics.jsonl, print it, and save the run's state for --resume."""
        run_folder.append_row(run_dir, row)
        tqdm.write(one_line(row, args.digits_plus))
        run_folder.save_state(run_dir, policy, optimizer, rng, generator, iteration, row)
        return row

    if state:  # --resume: back to the last evaluation, where the state was saved
        start = run_folder.restore_state(state, policy, optimizer, rng, generator)
        first, last = rows[0], rows[-1]
        tqdm.write(f"resuming {run_dir} at episode {state['episode']}")
    else:
        # how much of the penalty alpha removes where it matters (README: "Step 2"); at the start the
        # policy is the reference, so the first evaluation's greedy completions are the reference's
        first, greedy = evaluation(0)
        with mixed_precision(device, dtype):
            at_errors = certainty_at_errors(reference, sets["plus"], args.certainty, args.certainty_temperature,
                                            device, completions=greedy)
        decisive, elsewhere = (mean_weight(j, args.alpha) for j in at_errors)
        shown = ["n/a" if w is None else f"{w:.3f}" for w in (decisive, elsewhere)]
        tqdm.write(f"KL weight J_ref^alpha (alpha {args.alpha:g}): {shown[0]} at the states where the "
                   f"pre-trained model makes its first error, {shown[1]} on average elsewhere")
        last = log({**first, "weight_decisive": decisive, "weight_elsewhere": elsewhere}, 0)
        start = 0
    episode = start * per_iteration
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc="rl", dynamic_ncols=True)
    try:
        for it in bar:
            # 1. rollout: each problem appears group_size times in a row
            problems = [p for p in (data.rl_problem(n, args.digits_plus, rng) for _ in range(args.batch_size))
                        for _ in range(args.group_size)]
            policy.eval()
            with mixed_precision(device, gen_dtype):
                inputs, actions, mask, rewards = rollout(policy, problems, args, device, generator)
            policy.train()
            # 2. advantages
            advantages = group_advantages(rewards, args.group_size)
            # 3. teacher-forced log-probs and the update
            with torch.no_grad(), mixed_precision(device, dtype):
                ref_logits, _ = reference(inputs)
            old_logp = None
            for epoch in range(args.ppo_epochs if args.algo == "ppo" else 1):
                with mixed_precision(device, dtype):
                    logits, _ = policy(inputs)
                if args.algo == "ppo" and epoch == 0:  # the rollout policy is the policy before this batch's updates
                    old_logp = token_log_probs(logits.detach(), actions, args.temperature)
                loss, stats = rl_loss(logits, ref_logits, actions, advantages, mask, kl_coef=args.kl_coef,
                                      alpha=args.alpha, old_logp=old_logp, temperature=args.temperature,
                                      kl_estimator=args.kl_estimator, certainty_kind=args.certainty,
                                      certainty_temperature=args.certainty_temperature, clip=args.clip)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip or float("inf"))
                if not (torch.isfinite(loss) and torch.isfinite(norm)):  # stop before the weights are ruined
                    sys.exit(f"error: the loss or its gradient is not finite at episode {episode} (loss "
                             f"{loss.item():g}); {run_dir} holds the run up to its last evaluation; try a lower --lr")
                optimizer.step()
            # 4. log: an evaluation every eval_every episodes and at the end
            episode += len(problems)
            for k, v in {"reward": rewards.mean().item(), **stats}.items():
                window[k].append(v)
            bar.set_postfix(reward=f"{rewards.mean().item():.2f}", kl=f"{stats['kl']:.4f}")
            crossed = episode // args.eval_every > (episode - len(problems)) // args.eval_every  # passed k * eval_every
            if crossed or it == iterations - 1:
                last = log(evaluation(episode)[0], it + 1)
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted at episode {episode}: {run_dir} holds the run up to its last evaluation "
                 f"(episode {last['episode']}); continue with the same command and --resume")
    if args.save:
        save_checkpoint(os.path.join(run_dir, "model.pt"), policy, rl_args=vars(args), args=meta.get("args", {}),
                        episodes=episode)
    run_folder.finish(run_dir)
    print(f"done: N+{args.digits_plus} ({n + args.digits_plus} digits) greedy accuracy {first['acc_plus']:.1f}% -> "
          f"{last['acc_plus']:.1f}% | comfort zone {first['acc_comfort']:.1f}% -> {last['acc_comfort']:.1f}% | "
          f"{(time.time() - t0) / 60:.1f} min | {run_dir}")


if __name__ == "__main__":
    main()
