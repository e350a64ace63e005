"""
What an RL run measures besides its loss: each row of metrics.jsonl (rl.py calls `evaluate` every
--eval-every episodes), and the critical-token measurements that analyze.py probe's tables build on too.
Everything goes through data.py's task interface.

    evaluate                greedy and sampled accuracy on the run's held-out sets, critical-token probability
    evaluate_and_save       an RL run's evaluation: its metrics.jsonl row and the state --resume needs
    kl_split, window_means  the KL on uncertain and certain states; the training terms of a metrics.jsonl row
    evaluation_due          when rl.py evaluates; warn_if_nothing_to_learn: batches that bring no reward
    one_line                an evaluation as the progress line rl.py prints
    completion_logits       the model's teacher-forced distribution at every character of a completion
    critical_probabilities  how likely the model writes the right character at the task's critical tokens
    certainty_at_errors     the reference's certainty where its own generations first go wrong, and elsewhere
    weights_at_errors       the mean KL weight there and elsewhere: how much of the penalty alpha lifts
    mistakes, not_finite    wrong answers to print; what a non-finite loss means
    mean_ci, detectable, wilson_interval    intervals over seeds and problems (analyze.py's tables)

A reader of the method may skip it: it measures a run (evaluations, logs), it does not train one.
"""
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from lab import generation
from lab import run_folder
from lab.ranks import gather, sum_over_ranks, wait_for_ranks
from lab.runtime import mixed_precision


def evaluate(policy, sets, n, temperature, seed, device, dtype, decoding=(True, True), rank=0,
             ranks=1):
    """Greedy accuracy on N+k (the evaluation set, and the validation set that hyper-parameters are
    chosen on) and on the comfort zone, sampled accuracy on N+k at `temperature`, critical-token
    probability. Returns the metrics and the greedy N+k completions (which the first evaluation reuses).
    decoding: (fast, draft) for generation.complete. ranks: each completes every ranks-th problem of each set
    and the right answers are added up."""
    mine = {name: problems[rank::ranks] for name, problems in sets.items()}
    fast, draft = decoding
    with mixed_precision(device, dtype):
        generator = torch.Generator(device).manual_seed(seed + rank)
        places = {}  # the paper's commas one by one (Fig. 7)
        paper_lines, all_lines = critical_probabilities(policy, sets["critical"], n, temperature,
                                                        places=places)
        together = mine["plus"] + mine["val"] + mine["comfort"]  # one call: batches of similar lengths
        texts = generation.complete(policy, together, device=device, fast=fast, draft=draft)
        greedy, validation = texts[:len(mine["plus"])], texts[len(mine["plus"]):][:len(mine["val"])]
        comfort = texts[len(mine["plus"]) + len(mine["val"]):]
        sampled = generation.complete(policy, mine["plus"], temperature=temperature, device=device,
                                generator=generator, fast=fast, draft=draft)
    right = sum_over_ranks([sum(data.reward(problem, text) for problem, text in zip(mine[name], texts))
                            for name, texts in (("plus", greedy), ("val", validation), ("comfort", comfort),
                                                ("plus", sampled))])
    shares = gather(greedy)  # ranks: every rank's greedy texts, back in the order of the set
    greedy = [shares[i % ranks][i // ranks] for i in range(len(sets["plus"]))]
    return {
        "acc_plus": 100.0 * right[0] / len(sets["plus"]),
        "val_plus": 100.0 * right[1] / len(sets["val"]),
        "acc_comfort": 100.0 * right[2] / len(sets["comfort"]),
        "acc_plus_sampled": 100.0 * right[3] / len(sets["plus"]), "critical_p": paper_lines,
        "critical_p_all": all_lines, **places,
    }, greedy


def evaluate_and_save(run, iteration, window):
    """An evaluation of the run (rl.set_up's state) after `iteration` iterations: `evaluate`, every rank
    its share, then its row in metrics.jsonl and the state --resume goes on from. Evaluation 0 (window None:
    before training, the policy still the reference) also measures how much of the penalty the weighting
    lifts where it matters: the mean kl_weight where the reference's greedy texts first go wrong, and
    elsewhere (printed, and kept in the first row)."""
    args = run.args
    generators = gather(run.generator.get_state())  # ranks: each one's, for --resume
    measured, greedy = evaluate(run.policy, run.sets, run.n, args.temperature, args.seed, run.device,
                                run.gen_dtype, generation.SAMPLERS[args.sampler], run.rank, run.ranks)
    if run.rank == 0:
        row = {"episode": iteration * run.per_iteration, **measured, **window_means(window)}
        if window is None:
            with mixed_precision(run.device, run.dtype):
                decisive, elsewhere = weights_at_errors(run.reference, run.sets["plus"], greedy,
                                                        run.certainty_of, run.weight_of)
            tqdm.write(weights_line(decisive, elsewhere))
            row.update(weight_decisive=decisive, weight_elsewhere=elsewhere)
        row["minutes"] = round((time.time() - run.t0) / 60, 2)
        run_folder.save_evaluation(run.dir, row, run.policy, run.optimizer, run.rng, generators, iteration,
                                   run.identity)
        run.rows.append(row)
        tqdm.write(one_line(row, args.digits_plus))
        for line in mistakes(run.sets["plus"], greedy):
            tqdm.write(line)
    wait_for_ranks()


NO_REWARD_WARNING = 4  # iterations in a row without any reward before the run says so


def warn_if_nothing_to_learn(iterations, reward, rank):
    """Count the iterations in a row whose batch earned no reward at all, and say once, at NO_REWARD_WARNING,
    that the run has nothing to learn from (every advantage is 0). Returns the new count."""
    iterations = iterations + 1 if reward == 0 else 0
    if iterations == NO_REWARD_WARNING and rank == 0:
        tqdm.write(f"warning: no completion has earned a reward in {NO_REWARD_WARNING} iterations: every "
                   "advantage is 0, so nothing is learnt. Check data.reward, or sample more (--temperature, "
                   "--group-size)")
    return iterations


def evaluation_due(it, per_iteration, iterations, eval_every):
    """Whether RL iteration `it` (0-based, per_iteration episodes each) is followed by an evaluation: it
    crossed a multiple of eval_every episodes (rl.py's --eval-every), or it is the last of `iterations`."""
    crossed = (it + 1) * per_iteration // eval_every > it * per_iteration // eval_every
    return crossed or it == iterations - 1


def not_finite(loss, norm, stats, logits):
    """What went wrong when rl.py's loss or its gradient is not finite (stats: rl_loss's terms), and what
    to change: one line for its FloatingPointError."""
    if not torch.isfinite(logits).all():
        return "the policy's outputs are not finite (its weights have diverged): try a lower --lr"
    if all(map(math.isfinite, stats.values())) and not torch.isfinite(loss):
        return ("the loss overflows: --kl-coef times the KL term is too large for the float range; lower "
                "--kl-coef")
    return (f"the loss ({loss.item():g}) or its gradient norm ({norm.item():g}) is not finite: try a lower "
            "--lr")


def one_line(row, digits_plus):
    """The progress line printed at each evaluation."""
    line = (f"episode {row['episode']} | N+{digits_plus} greedy {row['acc_plus']:.1f}% sampled "
            f"{row['acc_plus_sampled']:.1f}% | val {row['val_plus']:.1f}% | "
            f"comfort {row['acc_comfort']:.1f}% | critical p {row['critical_p']:.3f}")
    return line + (f" | reward {row['reward']:.3f} kl {row['kl']:.4f}" if row["reward"] is not None else "")


def mistakes(problems, completions, shown=2):
    """Up to `shown` wrong greedy answers as lines to print (minGPT's adder does the same): the problem, the
    answer line written and the right one, and where the text first left the correct one."""
    lines = []
    for problem, text in zip(problems, completions):
        if data.reward(problem, text) or len(lines) == shown:
            continue
        right = data.target(problem)
        wrong = data.first_error(problem, text)
        answer = lambda t: (t.rstrip("\n").split("\n") or [""])[-1]  # the last line: the answer
        line = right[right.rfind("\n", 0, wrong) + 1:wrong]  # the right line up to where it went wrong
        where = (f"first wrong after {line!r}: {text[wrong:wrong + 1] or 'the end'!r} for "
                 f"{right[wrong:wrong + 1]!r}"
                 if wrong is not None else "the text is right, the answer line is not")
        lines.append(f"  {' '.join(data.prompt(problem).split())} wrote {answer(text)!r}, right "
                     f"{answer(right)!r}; {where}")
    return lines


@torch.no_grad()
def completion_logits(model, problems, completions=None):
    """Teacher-forced logits (float) over each completion, by default the correct text data.target: one
    (len(completion), V) tensor per problem, row c being the model's distribution for character c."""
    x, _ = data.make_batch(problems, next(model.parameters()).device, completions)
    logits, _ = model(x)
    texts = completions or [data.target(problem) for problem in problems]
    # x[t] predicts the character after it: the completion's first character is predicted at the prompt's last
    return [logits[i, len(data.prompt(problem)) - 1:][:len(text)].float()
            for i, (problem, text) in enumerate(zip(problems, texts))]


def critical_probabilities(model, problems, n, temperature, lines=(3, None), places=None):
    """Mean probability (at the sampling temperature) of the right character at the critical positions
    (data.critical_positions: for addition the ',' that continues a list longer than pre-training showed),
    with the correct text teacher-forced before it, i.e. while the copy is right; one value per entry of
    `lines`, all from one forward pass. 3 tracks the paper's positions (lines 1-3); None every line, which
    matters here because add7 mostly fails on lines 5-6. A dict `places` receives the paper's positions one
    by one, as the paper's Fig. 7 shows them: critical_p_line<j>_list<k>, the comma of line j in the k-th
    bracketed list of that line (operand 1 or 2)."""
    right = []  # per problem: the probability of the right character at every position of its text
    for problem, rows in zip(problems, completion_logits(model, problems)):
        truth = torch.tensor(data.encode(data.target(problem)), device=rows.device)
        right.append(F.softmax(rows / temperature, dim=-1).gather(1, truth[:, None]).squeeze(1))
    means = []
    for limit in lines:
        at = [p[data.critical_positions(problem, n, lines=limit)] for p, problem in zip(right, problems)]
        values = torch.cat(at).tolist()  # one copy from the device, not one per position
        means.append(sum(values) / max(1, len(values)))
    if places is not None:
        found = {}
        for p, problem in zip(right, problems):
            text, positions = data.target(problem), data.critical_positions(problem, n, lines=3)
            for c, value in zip(positions, p[positions].tolist()):
                line_start = text.rfind("\n", 0, c)
                name = f"critical_p_line{text.count(chr(10), 0, c) - 1}_list{text.count('[', line_start, c)}"
                found.setdefault(name, []).append(value)
        places.update({name: sum(v) / len(v) for name, v in sorted(found.items())})
    return means


def certainty_at_errors(reference, problems, completions, certainty):
    """The reference's certainty (`certainty`: logits -> J per row, rl.certainty with its settings) on its
    own completions: at the first wrong character of each failed one (the state where the error was made:
    "at_errors"; not analyze.py's "decisive", a test by sampling), and at every character before it or in a
    right one. Two lists of floats."""
    at_errors, elsewhere = [], []
    for problem, text, rows in zip(problems, completions, completion_logits(reference, problems)):
        J = certainty(rows)  # on the correct text: the same states as the model's own, up to its error
        wrong = data.first_error(problem, text)
        elsewhere += J[:wrong].tolist()  # wrong is None: the whole text
        if wrong is not None:
            at_errors.append(J[wrong].item())
    return at_errors, elsewhere


def weights_at_errors(reference, problems, completions, certainty, weight):
    """The mean KL weight, weight(J) (rl.kl_weight), at the states where the reference's completions first go
    wrong and on average elsewhere (README: "Step 2"): how much of the penalty a weighting lifts where it
    matters. certainty: logits -> J per row, as in certainty_at_errors."""
    return [mean_weight(values, weight) for values in certainty_at_errors(reference, problems, completions,
                                                                          certainty)]


def weights_line(decisive, elsewhere):
    """weights_at_errors as the line rl.py prints before training."""
    shown = ["n/a" if w is None else f"{w:.3f}" for w in (decisive, elsewhere)]
    return (f"KL weight (rl.kl_weight): {shown[0]} at the states where the pre-trained model makes its first "
            f"error, {shown[1]} on average elsewhere")


def mean_weight(certainties, weight):
    """The mean of weight(J) over a list of certainties J (floats); None for an empty list."""
    return sum(weight(j) for j in certainties) / len(certainties) if certainties else None


# J_ref below this is "uncertain": about the probe's low-certainty cut (Delta J below -0.05 in texts whose
# mean J is close to 1), which holds most of add7's first-error states
# (results/critical_tokens/probe/add7/probe.md)
UNCERTAIN = 0.95
LOW_SHARE = 0.1  # the other cut, relative to each batch: its lowest tenth of J


@torch.no_grad()
def kl_split(kl, mask, certainty, weight=None, critical=None):
    """Where the policy has moved from the reference on a training batch: `kl` (B, T), the exact per-state
    KL(pi || pi_ref) over the vocabulary (rl.kl_estimate's "full", whatever estimator the loss uses, and also
    with no penalty), on the generated states (mask 1), in all (kl_exact) and split by the reference's
    certainty J (`certainty`,
    (B, T): the run's own definition and temperature, as its kl_weight sees it) two ways:
      kl_uncertain / kl_certain, share_uncertain: J below UNCERTAIN or not, and the share below;
      kl_low_j / kl_high_j, j_low_cut: the batch's lowest LOW_SHARE of J, the rest, and the J that cuts them.
    With `critical` (B, T), the states of data.critical_states (the paper's commas while the copy is right):
    their exact KL, their number and, with `weight` (B, T, kl_weight of J), their mean weight.
    None where a side has no state (older runs logged the first three keys only: results/README.md)."""
    uncertain = (certainty < UNCERTAIN).float() * mask
    sides = {"kl_exact": mask, "kl_uncertain": uncertain, "kl_certain": mask - uncertain}
    seen = certainty[mask > 0].float()
    low = torch.zeros_like(mask)
    cut = None
    if seen.numel():
        lowest = torch.topk(-seen, max(1, round(LOW_SHARE * seen.numel()))).indices
        low[mask > 0] = torch.zeros_like(seen).index_fill_(0, lowest, 1.0).to(low.dtype)
        cut = seen[lowest].max().item()
    sides.update(kl_low_j=low, kl_high_j=mask - low)
    if critical is not None:
        sides["kl_critical"] = critical * mask
    split = {name: masked_average(kl, side) for name, side in sides.items()}
    split.update(share_uncertain=uncertain.sum().item() / max(1.0, mask.sum().item()), j_low_cut=cut)
    if critical is not None:
        split["critical_states"] = (critical * mask).sum().item()
        split["weight_critical"] = masked_average(weight, critical * mask) if weight is not None else None
    return split


def masked_average(values, side):
    """The mean of values (B, T) over the states where side is 1; None if there is none."""
    total = side.sum().item()
    return (values.float() * side).sum().item() / total if total > 0 else None


# the training terms each metrics.jsonl row averages since the last evaluation (train.jsonl has all of them)
WINDOW = ("reward", "kl", "kl_weighted", "policy_loss", "kl_weight", "kl_uncertain", "kl_certain",
          "share_uncertain", "kl_exact", "kl_low_j", "kl_high_j", "kl_critical", "weight_critical")


def training_window():
    """Each training term's values since the last evaluation: what its metrics.jsonl row averages."""
    return {k: [] for k in WINDOW}


def window_means(window):
    """The mean of each training term over the iterations since the last evaluation (None values skipped;
    None where there is none, and everywhere for window None: evaluation 0, before any training)."""
    if window is None:
        return {k: None for k in WINDOW}
    means = {}
    for name, values in window.items():
        values = [v for v in values if v is not None]
        means[name] = sum(values) / len(values) if values else None
    return means


# -----------------------------------------------------------------------------
# for the analysis commands (analyze.py)

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond 30, 1.96 is close enough)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
# one-sided 80% quantiles of Student's t for 1..30 degrees of freedom: with T_975, the paired difference that
# n seeds detect at 80% power, (t_975 + t_80) * sd / sqrt(n) (beyond 30: 0.842)
T_80 = [1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868,
        0.866, 0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855,
        0.854, 0.854]
def mean_ci(values):
    """Mean and the half-width of its 95% t-interval (nan for a single value: no interval)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)


def detectable(values):
    """The paired difference that len(values) pairs with this spread detect at 80% power, two-sided 5%:
    (t_975 + t_80) * sd / sqrt(n); nan below 2 pairs."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = (T_975[n - 2], T_80[n - 2]) if n - 1 <= len(T_975) else (1.96, 0.842)
    return (t[0] + t[1]) * sd / math.sqrt(n)


def wilson_interval(successes, n, z=1.96):
    """95% confidence interval (percent) for a binomial proportion; sound near 0% and 100%."""
    if n == 0:
        return 0.0, 100.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def solve(model, problems, device, dtype, temperature=0.0, draft=True):
    with mixed_precision(device, dtype):
        return generation.complete(model, problems, temperature=temperature, device=device, draft=draft)
