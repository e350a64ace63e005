"""
Look inside the models, and make every table and figure of the paper.

    python analyze.py accuracy --ckpt checkpoints/add7.pt [--n 1000]
        greedy exact-match accuracy on held-out 'identical' (K+K) and 'varying' (K+M, M <= K)
        problems, K = N..N+3, with 95% confidence intervals (paper Tables 4 and 5)
    python analyze.py errors --ckpt checkpoints/add7.pt [--digits 8] [--n 1000]
        for each failed K+K generation, the first character that differs from the correct scratchpad:
        which line, which field (operand list, A, carry, sum) and what was written instead
    python analyze.py probe [--ckpt checkpoints/add3.pt checkpoints/add5.pt checkpoints/add7.pt] [--n 50]
        finds the critical tokens with no hand-coded positions (low certainty, and forcing a wrong
        character there makes the answer fail), Table 1 (Delta J), Fig. 5 (a generation coloured by J),
        and the weight J^alpha of the penalty at the decisive states for a range of alphas
    python analyze.py curves runs/sweep [--name curves]
        learning curves of rl.py runs: runs that differ only in the seed are grouped; final N+k accuracy
        and area under the curve, mean and 95% t-interval over seeds (results/<name>.md and .png; with
        three or more alphas also <name>_vs_alpha.png, Fig. 6)
    python analyze.py study [--budget small|full] [--jobs 2]
        all of the above, rl.py runs included: Fig. 4, Fig. 6, Fig. 3 in results/study_<budget>/;
        --jobs N runs N rl.py runs at once, each with 1/N of the CPU threads
"""
import argparse
import csv
import io
import json
import math
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import torch

import data
import rl
from model import autocast_dtype, CheckpointError, load_checkpoint, mixed_precision, pick_device, set_threads


def wilson_interval(successes, n, z=1.96):
    """95% confidence interval (percent) for a binomial proportion; sound near 0% and 100%."""
    if n == 0:
        return 0.0, 100.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def load(path, device):
    try:
        return load_checkpoint(path, device, with_meta=True)
    except CheckpointError as e:
        sys.exit(f"error: {e}")


def pretrain_digits(meta, path):
    try:
        return int(meta["args"]["digits"])
    except (KeyError, TypeError, ValueError):
        sys.exit(f"error: {path} does not record its pre-training digits; pass a checkpoint made by pretrain.py")


def solve(model, problems, device, dtype, temperature=0.0):
    with mixed_precision(device, dtype):
        return data.complete(model, problems, temperature=temperature, device=device)


# -----------------------------------------------------------------------------
# where does a generation first go wrong?

def locate(a, b, i):
    """Where character i of scratchpad(a, b) sits: line (1 = first after '<scratch>'), field, index (for
    an operand list, how many of its digits come before it), the character, and the line's text/column."""
    truth = data.scratchpad(a, b)
    line_start = truth.rfind("\n", 0, i) + 1
    line_end = truth.find("\n", i)
    line = truth[line_start:line_end if line_end >= 0 else len(truth)]
    col = i - line_start
    field, index = _field(line, col)
    return {"offset": i, "line": truth.count("\n", 0, i) - 1, "field": field, "index": index,
            "expected": truth[i]}, line, col


def describe_error(completion, a, b):
    """None if the completion is the exact scratchpad, else a dict describing the first wrong character."""
    i = data.first_error(completion, a, b)
    if i is None:
        return None
    where, line, col = locate(a, b, i)
    wrote = completion[i] if i < len(completion) else "(end)"
    return {**where, "wrote": wrote, "kind": _kind(where["field"], where["expected"], wrote, line, col)}


def _field(line, col):
    """Which part of a scratchpad line the column falls in, and for an operand list how many of its
    digits come before the column (so the comma after the 7th digit has index 7)."""
    if not line.startswith("["):
        return ("answer line" if line[:1].isdigit() else "other"), None
    first_end = line.index("]")
    second_start = line.index("[", first_end)
    second_end = line.index("]", second_start)
    if col <= first_end:
        return "operand 1", sum(ch.isdigit() for ch in line[1:col])
    if second_start <= col <= second_end:
        return "operand 2", sum(ch.isdigit() for ch in line[second_start + 1:col])
    if col < line.index("A="):
        return "separator", None
    acc_end = line.index("]", line.index("A="))
    if col <= acc_end:
        return "A", None
    if line.endswith("END"):
        return "carry (last line)", None
    plus = line.index("+", acc_end)
    boundaries = [(plus, "carry"), (line.index("=", plus), "sum operands"),
                  (line.index(" , A->", acc_end), "digit sum"), (line.index(" , C->", acc_end), "new digit")]
    return next((name for end, name in boundaries if col < end), "new carry"), None


def _kind(field, expected, wrote, line, col):
    if not field.startswith("operand"):
        return f"wrong character in {field}"
    if expected == "," and wrote == "]":
        return "closed the list too early (']' for ',')"
    if expected == "]" and wrote == ",":
        return "kept the list open (',' for ']')"
    if expected.isdigit() and wrote.isdigit():
        rest = line[col:line.index("]", col)].replace(",", "")
        if len(rest) > 1 and wrote == rest[1]:
            return "skipped a digit"
        return "wrong digit"
    return f"wrote {wrote!r} for {expected!r}"


# -----------------------------------------------------------------------------
# the critical-token probe (paper section 6, Table 1, Fig. 5)


def scratchpad_certainty(model, problems, device, dtype):
    """For each problem, the model's certainty J (Eq. 2) at every character of the correct scratchpad,
    teacher-forced (the same states as its own generation up to its first error), and the character it
    would most likely write there instead of the right one. Returns a list of (J, wrong) pairs."""
    with mixed_precision(device, dtype):
        logits = rl.completion_logits(model, problems)
    out = []
    for (a, b), rows in zip(problems, logits):
        J = rl.certainty(rows).cpu()
        rows[torch.arange(len(rows)), torch.tensor(data.encode(data.scratchpad(a, b)), device=rows.device)] = float("-inf")
        rows[:, data.PAD_ID] = float("-inf")  # the right character and padding are not alternatives
        out.append((J, [data.VOCAB[t] for t in rows.argmax(-1).tolist()]))
    return out


@torch.no_grad()
def continue_from(model, problems, prefixes, device, dtype, temperature=0.0, generator=None, batch_size=256):
    """The completion prefix + the model's continuation of prompt + prefix (greedy, or sampled at
    `temperature` with `generator`), for each pair."""
    order = sorted(range(len(problems)), key=lambda i: len(prefixes[i]) - data.sequence_length(*problems[i]))
    completions = [None] * len(problems)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch, heads = [problems[i] for i in chunk], [prefixes[i] for i in chunk]
        idx = data.prompt_batch(batch, device, prefixes=heads)
        room = min(max(data.max_new_tokens(a, b) - len(h) for (a, b), h in zip(batch, heads)),
                   model.config.block_size - idx.size(1))
        with mixed_precision(device, dtype):
            out = model.generate(idx, max(1, room), temperature=temperature, generator=generator)
        for i, head, row in zip(chunk, heads, out[:, idx.size(1):].tolist()):
            completions[i] = head + data.decode(row)
    return completions


def probe(model, n, problems, greedy, device, dtype, drop=0.05, controls=4, samples=8, low_tested=4,
          temperature=1.0, seed=0):
    """Test tokens on the correct path of each problem, chosen in ways that do and do not look at the
    certainty J, for the two properties of a critical token:
      low certainty: Delta J = J(token) - mean J(other tokens of the text) below -drop;
      decisive: `samples` continuations sampled at `temperature` after the right character succeed
          clearly more often than after the model's most likely wrong one (95% Wilson intervals apart).
    Delta J is measured at the paper's n+1 commas (every line), the first wrong character of each failed
    greedy completion in `greedy`, every low-certainty token and `controls` uniformly random places per
    problem (whatever their J). Decisiveness, which costs 2 x `samples` generations per token, is tested
    at the commas of lines 1-3, the first errors, the random places and up to `low_tested` random
    low-certainty tokens per problem ("decisive" is None elsewhere). Returns one dict per token ("why":
    how it was chosen) and {problem: J at every character}."""
    rng = torch.Generator().manual_seed(seed)
    tested, certainty = [], {}
    for (a, b), text, (J, wrong) in zip(problems, greedy, scratchpad_certainty(model, problems, device, dtype)):
        certainty[(a, b)] = J.tolist()
        delta = delta_j(J)
        end = data.scratchpad(a, b).index("</scratch>")  # the answer line only copies A: not probed
        why = {}
        for t in data.critical_positions(a, b, n, lines=None):
            why.setdefault(t, set()).add("every line")
        for t in data.critical_positions(a, b, n, lines=3):
            why.setdefault(t, set()).add("paper")
        error = data.first_error(text, a, b)
        if error is not None and error < len(J):
            why.setdefault(error, set()).add("first error")
        for t in range(end):
            if delta[t] < -drop:
                why.setdefault(t, set()).add("low")
        for t in torch.randperm(end, generator=rng)[:controls].tolist():
            why.setdefault(t, set()).add("random")
        low = [t for t, reasons in why.items() if "low" in reasons]
        test_low = {low[i] for i in torch.randperm(len(low), generator=rng)[:low_tested].tolist()}
        for t, reasons in sorted(why.items()):
            tested.append({"problem": (a, b), "t": t, "J": J[t].item(), "delta": delta[t].item(), "why": reasons,
                           "low": delta[t].item() < -drop, "wrote": wrong[t], **locate(a, b, t)[0],
                           "test": t in test_low or bool(reasons & {"paper", "first error", "random"})})
    # decisiveness: the same number of sampled continuations after the right and after the wrong character
    for row in tested:
        row["decisive"] = row["critical"] = None
    tested, untested = [r for r in tested if r["test"]], [r for r in tested if not r["test"]]
    truths = [data.scratchpad(*row["problem"]) for row in tested]
    probs = [row["problem"] for row in tested for _ in range(samples)]
    generator = torch.Generator(device).manual_seed(seed)
    for key, prefix in (("right_wins", lambda s, r: s[:r["t"] + 1]), ("wrong_wins", lambda s, r: s[:r["t"]] + r["wrote"])):
        texts = continue_from(model, probs, [prefix(s, r) for s, r in zip(truths, tested) for _ in range(samples)],
                              device, dtype, temperature, generator)
        for i, row in enumerate(tested):
            row[key] = sum(data.reward(c, *row["problem"]) for c in texts[i * samples:(i + 1) * samples])
    for row in tested:
        row["decisive"] = decisive(row["right_wins"], row["wrong_wins"], samples)
        row["critical"] = row["low"] and row["decisive"]
    return sorted(tested + untested, key=lambda r: (problems.index(r["problem"]), r["t"])), certainty


def decisive(right_wins, wrong_wins, samples):
    """Whether continuations after the right character succeed clearly more often than after the wrong one:
    the 95% Wilson intervals of the two success rates do not overlap."""
    return wilson_interval(right_wins, samples)[0] > wilson_interval(wrong_wins, samples)[1]


def delta_j(J):
    """Delta J: each token's certainty minus the mean certainty of the other tokens of the same text."""
    return J - (J.sum() - J) / (len(J) - 1)


# Table 1's rows: which tested tokens each one takes, and how they were chosen
TABLE1_ROWS = [
    ("the paper's n+1 comma, lines 1-3 (fixed places)", lambda r: "paper" in r["why"]),
    ("the n+1 comma, every line (fixed places)", lambda r: "every line" in r["why"]),
    ("first wrong character of failed greedy texts", lambda r: "first error" in r["why"]),
    ("random places (J not looked at)", lambda r: "random" in r["why"]),
    ("random places found decisive (no Delta J filter)", lambda r: "random" in r["why"] and r["decisive"]),
    ("low certainty (Delta J below -drop: selected by Delta J)", lambda r: r["low"]),
    ("low certainty and decisive (selected by Delta J)", lambda r: r["critical"]),
]


def table1(tested, certainty, drop):
    """Table 1: for each way of choosing tokens, Delta J (mean and sd), how many, the share below -drop,
    and how many of those tested for decisiveness are decisive; last, every token of the texts."""
    def row(name, deltas, decisive):
        v = torch.tensor(deltas)
        return {"positions": name, "n": len(deltas), "mean": v.mean().item() if deltas else float("nan"),
                "sd": v.std().item() if len(deltas) > 1 else float("nan"),
                "below": (v < -drop).float().mean().item() if deltas else float("nan"), "decisive": decisive}
    rows = []
    for name, take in TABLE1_ROWS:
        chosen = [r for r in tested if take(r)]
        judged = [r for r in chosen if r["decisive"] is not None]
        rows.append(row(name, [r["delta"] for r in chosen], f"{sum(r['decisive'] for r in judged)}/{len(judged)}"))
    every = [d for J in certainty.values() for d in delta_j(torch.tensor(J)).tolist()]
    rows.append(row("every token of the texts", every, "n/a"))
    return rows


def ansi_certainty(text, J, low):
    """The text with each character's background coloured by J: white at 1, red at `low` and below."""
    out = []
    for ch, j in zip(text, J):
        x = max(0.0, min(1.0, (j - low) / (1 - low)))
        colour = f"\x1b[48;2;255;{int(80 + 175 * x)};{int(80 + 175 * x)}m\x1b[38;2;0;0;0m"
        out.append(colour + ("\u21b5" if ch == "\n" else ch) + "\x1b[0m" + ("\n" if ch == "\n" else ""))
    return "".join(out)


def plot_certainty(text, J, low, path, title):
    """Fig. 5: the text on a grid, each cell coloured by the certainty J of the model writing it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines = text.split("\n")
    width = max(len(line) for line in lines) + 1
    grid = torch.full((len(lines), width), float("nan"))
    row = col = 0
    for ch, j in zip(text, J):
        grid[row, col] = j
        row, col = (row + 1, 0) if ch == "\n" else (row, col + 1)
    fig, ax = plt.subplots(figsize=(0.085 * width + 1.5, 0.25 * len(lines) + 0.8))
    image = ax.imshow(grid.numpy(), cmap="Reds_r", vmin=low, vmax=1.0, aspect="auto", interpolation="nearest")
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            dark = grid[r, c] < (low + 1) / 2
            ax.text(c, r, ch, ha="center", va="center", family="monospace", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="certainty J")
    save_figure(fig, path)


ALPHAS = [0, 1, 3, 10, 30, 100, 300, 1000, 10000]


def cmd_probe(args, device, dtype):
    summary = ["| checkpoint | N | N+1 greedy accuracy | " + " | ".join(name for name, _ in TABLE1_ROWS) +
               " | every token |", "|---" * (len(TABLE1_ROWS) + 4) + "|"]
    report = []
    for path in args.ckpt:
        model, meta = load(path, device)
        n = pretrain_digits(meta, path)
        if data.sequence_length(10 ** (n + 1) - 1, 10 ** (n + 1) - 1) > model.config.block_size:
            sys.exit(f"error: {path} has too few positions for {n + 1}-digit problems")
        problems = data.eval_set("identical", n + 1, args.n)
        completions = solve(model, problems, device, dtype)
        accuracy = 100 * sum(data.reward(c, a, b) for c, (a, b) in zip(completions, problems)) / len(problems)
        tested, certainty = probe(model, n, problems, completions, device, dtype, drop=args.drop,
                                  controls=args.controls, samples=args.samples, low_tested=args.low_tested)
        rows = table1(tested, certainty, args.drop)
        show = lambda r: "n/a" if r["n"] == 0 else f"{r['mean']:+.3f} +- {r['sd']:.3f} (n={r['n']})"
        summary.append(f"| {path} | {n} | {accuracy:.1f}% | " + " | ".join(show(r) for r in rows) + " |")
        randoms = [r for r in tested if "random" in r["why"]]
        right = sum(r["right_wins"] for r in randoms) / max(1, len(randoms) * args.samples)
        wrong = sum(r["wrong_wins"] for r in randoms) / max(1, len(randoms) * args.samples)
        critical = [r for r in tested if r["critical"]]
        report += [f"## {path} (N = {n}): {len(problems)} problems of {n + 1}+{n + 1} digits, greedy accuracy "
                   f"{accuracy:.1f}%", "",
                   "| tokens chosen as | tokens | Delta J (mean +- sd) | Delta J below -" f"{args.drop:g} | decisive |",
                   "|---|---|---|---|---|"]
        for r in rows:
            measured = r["n"] > 0
            report.append(f"| {r['positions']} | {r['n']} | " + (f"{r['mean']:+.4f} +- {r['sd']:.4f} | "
                          f"{100 * r['below']:.0f}%" if measured else "n/a | n/a") + f" | {r['decisive']} |")
        report += ["", f"Decisive = {args.samples} continuations sampled at T = 1 after the right character succeed "
                   f"clearly more often (95% Wilson intervals apart) than {args.samples} after the model's most likely "
                   f"wrong one. The baseline, at the random places: after the right character {100 * right:.0f}% of "
                   f"the continuations succeed, after the wrong one {100 * wrong:.0f}%."]
        if accuracy == 0 or right < 0.05:
            report.append(f"This model solves {accuracy:.0f}% of these problems: its continuations fail after the "
                          "right character too, so the test cannot tell decisive tokens from the others here.")
        report += ["", "Where the low-certainty decisive tokens are:", "",
                   "| line | field | digits before | right -> likely wrong (most common) | tokens | mean Delta J | "
                   "paper's place |", "|---|---|---|---|---|---|---|"]
        places = {}
        for r in critical:
            places.setdefault((r["line"], r["field"], r["index"]), []).append(r)
        for (line, field, index), members in sorted(places.items(), key=lambda item: -len(item[1]))[:args.top]:
            (right_char, wrote), _ = Counter((r["expected"], r["wrote"]) for r in members).most_common(1)[0]
            report.append(f"| {line} | {field} | {'' if index is None else index} | {right_char!r} -> {wrote!r} | "
                          f"{len(members)} | {sum(r['delta'] for r in members) / len(members):+.3f} | "
                          f"{'yes' if 'paper' in members[0]['why'] else ''} |")
        # which alpha does what: the penalty's weight where this model decides its errors, and elsewhere
        with mixed_precision(device, dtype):
            decisive, elsewhere = rl.certainty_at_errors(model, data.eval_set("rl", 1, args.alpha_n, n=n),
                                                         device=device)
        report += ["", f"Which alpha does what: the weight J^alpha of the KL term on {args.alpha_n} held-out "
                   f"'N+1' problems (rl.py's training distribution), at the first wrong character of the "
                   f"{len(decisive)} failed greedy generations and on average over the {len(elsewhere)} "
                   f"characters written right:", "",
                   "| alpha | " + " | ".join(f"{a:g}" for a in ALPHAS) + " |", "|---" * (len(ALPHAS) + 1) + "|"]
        for name, values in (("at the first error", decisive), ("elsewhere", elsewhere)):
            report.append(f"| {name} | " + " | ".join("n/a" if not values else f"{rl.mean_weight(values, a):.3f}"
                                                      for a in ALPHAS) + " |")
        report.append("")
        # Fig. 5: the first problem with a critical token, as the model writes it from its prompt
        if critical:
            a, b = critical[0]["problem"]
            text = completions[problems.index((a, b))]
            with mixed_precision(device, dtype):
                J = rl.certainty(rl.completion_logits(model, [(a, b)], [text])[0]).cpu().tolist()
            low_j = min(J)
            if sys.stdout.isatty():  # colours only for a terminal, not for a file or a pipe
                print(f"\n{path}: {a}+{b}, coloured by certainty J (red = {low_j:.2f}, white = 1), "
                      f"{'right' if data.reward(text, a, b) else 'wrong'} answer\n{ansi_certainty(text, J, low_j)}")
            stem = os.path.splitext(os.path.basename(path))[0]
            plot_certainty(text, J, low_j, os.path.join(args.results, f"certainty_{stem}.png"),
                           f"{stem}: {a}+{b}, each character coloured by the certainty J of the model writing it")
    text = "\n".join(["# Critical-token probe (`python analyze.py probe`)", "",
                      "Table 1: Delta J = certainty on the token minus the mean certainty on the other tokens of its "
                      "text, mean +- sd (n tokens), for tokens chosen in different ways. The two low-certainty columns "
                      "choose by Delta J (below -drop by construction); the paper reports critical tokens.",
                      "", *summary, "", *report])
    write_text(os.path.join(args.results, "probe.md"), text + "\n")
    print(text)


# -----------------------------------------------------------------------------
# learning curves of rl.py runs: mean and 95% interval over seeds

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond 30, 1.96 is close enough)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
# what varies between seeds of one experiment, or does not change what is learned
# (eval_every and eval_size change what was measured, so they do split groups)
NOT_A_SETTING = {"seed", "name", "out", "device", "save", "threads", "fast_generate", "force", "resume"}


def mean_ci(values):
    """Mean and the half-width of its 95% t-interval (nan for a single value: no interval)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)


RETIRED = {"reward": "01"}  # --reward pm1 was the 0/1 reward with a doubled advantage under the group baseline
REQUIRED = ("episode", "acc_plus", "acc_comfort")  # what every metrics.jsonl row must have


def read_run(run_dir):
    """config.json and the rows of metrics.jsonl of one rl.py run; None if it has not logged anything.
    A file that cannot be read is an error naming the file and line, not a run silently dropped."""
    config_path, metrics_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    if not (os.path.exists(config_path) and os.path.exists(metrics_path)):
        return None
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: {config_path} is not readable JSON ({e}); remove the run or repair the file")
    for flag, value in RETIRED.items():  # a flag rl.py no longer has, at the value every run now uses
        if config.get(flag) == value:
            del config[flag]
    rows = []
    with open(metrics_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                sys.exit(f"error: {metrics_path} line {number} is not JSON; remove the line or the run")
            missing = [k for k in REQUIRED if not isinstance(row, dict) or row.get(k) is None]
            if missing:
                sys.exit(f"error: {metrics_path} line {number} lacks {', '.join(missing)}; remove the line or the run")
            rows.append(row)
    return {"dir": run_dir, "config": config, "rows": rows} if rows else None


def run_finished(run):
    """Whether a run logged its last evaluation (a run cut off early has no final accuracy)."""
    return run["rows"][-1]["episode"] >= run["config"].get("episodes", 0)


def damaged(run):
    """Issue-10's damage test for one run: the comfort zone lost 5 points or more, or the N+k accuracy
    ended below its start, or a logged value is not finite."""
    first, last = run["rows"][0], run["rows"][-1]
    values = [v for r in run["rows"] for v in r.values() if isinstance(v, float)]
    return (first["acc_comfort"] - last["acc_comfort"] >= 5 or last["acc_plus"] < first["acc_plus"]
            or any(r.get(k) is None for r in run["rows"] for k in ("acc_plus", "acc_comfort"))
            or not all(math.isfinite(v) for v in values))


def plus_minus(mean, half, digits=1):
    """'mean +- half', 'mean (1 seed)' where there is no interval, 'n/a' where nothing was measured."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} " + ("(1 seed)" if math.isnan(half) else f"+- {half:.{digits}f}")


def area_under_curve(rows, key="acc_plus"):
    """Mean of `key` over training (trapezoids over episodes), in the curve's units: 100 = perfect throughout."""
    xs, ys = [r["episode"] for r in rows], [r[key] for r in rows]
    if len(xs) < 2 or xs[-1] == xs[0]:
        return ys[-1]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])) / (xs[-1] - xs[0])


def group_runs(runs):
    """Runs that share every setting except the seed form one group. Returns [(label, settings, runs)],
    the label naming only the settings that differ between groups."""
    groups = {}
    for run in runs:
        settings = {k: v for k, v in run["config"].items() if k not in NOT_A_SETTING}
        groups.setdefault(json.dumps(settings, sort_keys=True), (settings, []))[1].append(run)
    all_settings = [s for s, _ in groups.values()]
    keys = sorted({k for s in all_settings for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in all_settings}) > 1]
    out = []
    for settings, members in groups.values():
        label = ", ".join(f"{k}={settings.get(k)}" for k in varying) or "all runs"
        out.append((label, settings, sorted(members, key=lambda r: r["config"].get("seed", 0))))
    numbers_first = lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, json.dumps(v))
    return sorted(out, key=lambda g: [numbers_first(g[1].get(k)) for k in varying])


def summarize(groups):
    """One row per group: final accuracy and area under the curve, mean and 95% interval over the seeds
    that finished (`unfinished` counts the others, left out); groups with no finished run are dropped."""
    table = []
    for label, settings, members in groups:
        done = [r for r in members if run_finished(r)]
        if not done:
            continue
        row = {"group": label, "settings": settings, "seeds": len(done), "unfinished": len(members) - len(done),
               "episodes": done[0]["rows"][-1]["episode"], "runs": done}
        for name, values in (("final", [r["rows"][-1]["acc_plus"] for r in done]),
                             ("val", [r["rows"][-1].get("val_plus", float("nan")) for r in done]),
                             ("auc", [area_under_curve(r["rows"]) for r in done]),
                             ("comfort", [r["rows"][-1]["acc_comfort"] for r in done]),
                             ("critical_p", [r["rows"][-1].get("critical_p", float("nan")) for r in done]),
                             ("critical_p_all", [r["rows"][-1].get("critical_p_all", float("nan")) for r in done]),
                             ("kl", [r["rows"][-1].get("kl") or 0.0 for r in done])):
            row[name], row[name + "_ci"] = mean_ci(values)
        row["start"] = done[0]["rows"][0]["acc_plus"]
        row["damaged"] = sum(damaged(r) for r in done)
        row["sampled"], row["sampled_ci"] = mean_ci([r["rows"][-1].get("acc_plus_sampled", float("nan")) for r in done])
        table.append(row)
    return table


# -----------------------------------------------------------------------------
# subcommands

def cmd_accuracy(args, device, dtype):
    rows = []
    for path in args.ckpt:
        model, meta = load(path, device)
        n = pretrain_digits(meta, path)
        for kind in ("identical", "varying"):
            for k in range(n, n + args.extra + 1):
                if data.sequence_length(10 ** k - 1, 10 ** k - 1) > model.config.block_size:
                    continue
                problems = data.eval_set(kind, k, args.n)
                completions = solve(model, problems, device, dtype)
                wins = sum(data.reward(c, a, b) for c, (a, b) in zip(completions, problems))
                low, high = wilson_interval(wins, len(problems))
                rows.append({"checkpoint": path, "N": n, "set": kind, "K": k, "n": len(problems),
                             "accuracy": round(100 * wins / len(problems), 1), "ci_low": round(low, 1),
                             "ci_high": round(high, 1)})
                print(f"{path} {kind} K={k}: {rows[-1]['accuracy']:.1f}%", file=sys.stderr)
    lines = ["| checkpoint | set | K | accuracy % | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['set']} | {r['K']} | {r['accuracy']:.1f} | {r['ci_low']:.1f}-{r['ci_high']:.1f} |"
              for r in rows]
    print("\n".join(lines))
    write_csv(os.path.join(args.results, "accuracy.csv"), rows)
    write_text(os.path.join(args.results, "accuracy.md"),
               f"`python analyze.py accuracy --ckpt {' '.join(args.ckpt)} --n {args.n}` (greedy exact match, "
               f"Wilson 95% intervals)\n\n" + "\n".join(lines) + "\n")


def cmd_errors(args, device, dtype):
    model, meta = load(args.ckpt, device)
    n = pretrain_digits(meta, args.ckpt)
    k = args.digits or n + 1
    if data.sequence_length(10 ** k - 1, 10 ** k - 1) > model.config.block_size:
        sys.exit(f"error: {k}-digit problems do not fit {args.ckpt} ({model.config.block_size} positions); "
                 f"choose a smaller --digits")
    problems = data.eval_set("identical", k, args.n)
    completions = solve(model, problems, device, dtype)
    failures = [(c, a, b) for c, (a, b) in zip(completions, problems) if not data.reward(c, a, b)]
    errors = [describe_error(c, a, b) for c, a, b in failures]  # never None: a perfect scratchpad ends right
    in_lists = [e for e in errors if e["field"].startswith("operand") and e["line"] <= 3]
    at_critical = {lines: sum(e["offset"] in data.critical_positions(a, b, n, lines)
                              for e, (c, a, b) in zip(errors, failures)) for lines in (3, None)}
    print(f"{args.ckpt}: {k}+{k} greedy accuracy {100 * (1 - len(failures) / len(problems)):.1f}% "
          f"({len(failures)} of {len(problems)} failed)")
    if failures:
        share = lambda count: f"{count} of {len(failures)} failures ({100 * count / len(failures):.1f}%)"
        print(f"- first error in an operand list on lines 1-3: {share(len(in_lists))}")
        print(f"- first error at the paper's critical comma on lines 1-3: {share(at_critical[3])}")
        print(f"- first error at the critical comma of any line (a list longer than pre-training ever showed on "
              f"that line, closed where pre-training closed it): {share(at_critical[None])}")
        print("\n| line | field | digits before | expected | wrote | kind | count |\n|---|---|---|---|---|---|---|")
        where = Counter((e["line"], e["field"], e["index"], e["expected"], e["wrote"], e["kind"]) for e in errors)
        for (line, field, index, expected, wrote, kind), count in where.most_common(args.top):
            print(f"| {line} | {field} | {'' if index is None else index} | {expected!r} | {wrote!r} | {kind} | {count} |")
        print("\n| kind | count |\n|---|---|")
        for kind, count in Counter(e["kind"] for e in errors).most_common(args.top):
            print(f"| {kind} | {count} |")
    for c, a, b in failures[:args.show]:
        print(f"\nclaims {a}+{b}={data.parse_answer(c)}, truth {a + b}; first error: {describe_error(c, a, b)}")


def find_runs(paths):
    """Run folders named directly, or found one level below a named folder (runs/sweep -> runs/sweep/*)."""
    runs = []
    for path in paths:
        candidates = [path] if os.path.exists(os.path.join(path, "metrics.jsonl")) else \
            sorted(os.path.join(path, d) for d in (os.listdir(path) if os.path.isdir(path) else []))
        runs += [r for r in map(read_run, candidates) if r is not None]
    return runs


def plot_curves(groups, path, title):
    """Fig. 4: held-out N+k accuracy and critical-token probability against episodes, mean and 95% band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (label, _, members), color in zip(groups, plt.cm.viridis([i / max(1, len(groups) - 1) for i in range(len(groups))])):
        # rows are matched by episode, not by position: a run cut off early adds to the episodes it reached
        episodes = sorted({r["episode"] for run in members for r in run["rows"]})
        by_episode = [{r["episode"]: r for r in run["rows"]} for run in members]
        for ax, key in zip(axes, ("acc_plus", "critical_p", "critical_p_all")):
            columns = [[rows[e].get(key, float("nan")) for rows in by_episode if e in rows] for e in episodes]
            stats = [mean_ci(c) for c in columns]
            mean = [m for m, _ in stats]
            ax.plot(episodes, mean, color=color, label=f"{label} ({len(members)} seeds)")
            ax.fill_between(episodes, [m - h for m, h in stats], [m + h for m, h in stats], color=color, alpha=0.2)
    axes[0].set(xlabel="episodes", ylabel="held-out N+k greedy accuracy (%)", title=title)
    axes[1].set(xlabel="episodes", ylabel="p(correct ',' at the n+1 comma)", title="critical tokens, lines 1-3 (paper)")
    axes[2].set(xlabel="episodes", ylabel="p(correct ',' at the n+1 comma)", title="critical tokens, every line")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_alpha(groups, table, path):
    """Fig. 6: final N+k accuracy and area under the curve against alpha (mean and 95% interval over
    seeds), one line per combination of the other settings. False if fewer than 3 alphas were run."""
    series = {}
    for (label, settings, _), row in zip(groups, table):
        rest = ", ".join(part for part in label.split(", ") if not part.startswith("alpha=")) or "all runs"
        series.setdefault(rest, []).append((settings.get("alpha", 0.0), row))
    if max(len(points) for points in series.values()) < 3:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rest, points in series.items():
        points.sort(key=lambda p: p[0])
        for ax, key in zip(axes, ("final", "auc")):
            ax.errorbar([a for a, _ in points], [r[key] for _, r in points], yerr=[r[key + "_ci"] for _, r in points],
                        marker="o", capsize=3, label=f"{rest} (seeds: {', '.join(str(r['seeds']) for _, r in points)})")
    for ax, what in zip(axes, ("final", "area under the curve of")):
        ax.set_xscale("symlog", linthresh=1)  # alpha = 0 (the standard penalty) stays on the axis
        ax.axhline(points[0][1]["start"], color="grey", linestyle=":", label="before RL")
        ax.set(xlabel="alpha (0 = standard KL)", ylabel=f"{what} N+k greedy accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def save_figure(fig, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)


def load_groups(paths):
    """The rl.py runs under `paths`, grouped by setting and summarized; exits with one line if none."""
    runs = find_runs(paths)
    if not runs:
        sys.exit(f"error: no rl.py runs (folders with metrics.jsonl) in {' '.join(paths)}; run rl.py first")
    groups = group_runs(runs)
    table = summarize(groups)
    unfinished = [r["dir"] for r in runs if not run_finished(r)]
    if unfinished:
        print(f"left out, not finished: {', '.join(unfinished)}", file=sys.stderr)
    return groups, table, unfinished


def write_table(args, command, lines, unfinished):
    text = "\n".join(lines) + "\n" + (f"\nLeft out, not finished: {', '.join(unfinished)}\n" if unfinished else "")
    print(text, end="")
    # the first line is the command that rewrites this file from the logs (tests/test_readme.py re-runs it)
    write_text(os.path.join(args.results, args.name + ".md"),
               f"`python analyze.py {command} {' '.join(args.runs)} --name {args.name} --results {args.results}`\n\n" + text)


def cmd_curves(args):
    groups, table, unfinished = load_groups(args.runs)
    lines = ["| runs | seeds | episodes | N+k accuracy: start | final (95% CI) | validation final | area under curve "
             "(95% CI) | sampled final | comfort zone final (95% CI) | damaged seeds | critical p final, lines 1-3 / "
             "every line (95% CI) | KL/token final |", "|---" * 12 + "|"]
    for r in table:
        lines.append(f"| {r['group']} | {r['seeds']} | {r['episodes']} | {r['start']:.1f} | "
                     f"{plus_minus(r['final'], r['final_ci'])} | {plus_minus(r['val'], r['val_ci'])} | "
                     f"{plus_minus(r['auc'], r['auc_ci'])} | {plus_minus(r['sampled'], r['sampled_ci'])} | "
                     f"{plus_minus(r['comfort'], r['comfort_ci'])} | {r['damaged']}/{r['seeds']} | "
                     f"{plus_minus(r['critical_p'], r['critical_p_ci'], 4)} / "
                     f"{plus_minus(r['critical_p_all'], r['critical_p_all_ci'], 4)} | {r['kl']:.4f} |")
    lines += ["", "At each evaluation (mean and 95% interval over the finished seeds):", "",
              "| runs | episode | N+k greedy | comfort zone | critical p, lines 1-3 | critical p, every line |",
              "|---|---|---|---|---|---|"]
    for r in table:
        by_episode = {}
        for run in r["runs"]:
            for row in run["rows"]:
                by_episode.setdefault(row["episode"], []).append(row)
        for episode, rows in sorted(by_episode.items()):
            cell = lambda key, digits: plus_minus(*mean_ci([x.get(key, float("nan")) for x in rows]), digits)
            lines.append(f"| {r['group']} | {episode} | {cell('acc_plus', 1)} | {cell('acc_comfort', 1)} | "
                         f"{cell('critical_p', 4)} | {cell('critical_p_all', 4)} |")
    write_table(args, "curves", lines, unfinished)
    plot_curves(groups, os.path.join(args.results, args.name + ".png"), args.name)
    plot_alpha(groups, table, os.path.join(args.results, args.name + "_vs_alpha.png"))


def is_uniform(settings):
    """The standard penalty (alpha 0) or no penalty (kl_coef 0): every state weighted alike."""
    return settings.get("alpha", 0) == 0 or settings.get("kl_coef", 0) == 0


def beaten_by(row, table):
    """The uniform groups whose mean final accuracy is at least row's with no more mean KL to the reference
    (empty: row lies above the uniform frontier)."""
    return [u for u in table if is_uniform(u["settings"]) and u is not row
            and u["kl"] <= row["kl"] and u["final"] >= row["final"]]


def plot_frontier(table, path, title):
    """Final and area-under-curve N+k accuracy, and final comfort-zone accuracy, against the final KL to
    the reference: one small dot per run, the group's mean with 95% intervals on both axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, ylabel in zip(axes, ("final", "auc", "comfort"), ("final N+k greedy accuracy (%)",
                               "area under the N+k curve (%)", "final comfort-zone accuracy (%)")):
        for uniform, color in ((True, "tab:blue"), (False, "tab:orange")):
            rows = [r for r in table if is_uniform(r["settings"]) == uniform]
            for r in rows:
                per_run = {"final": lambda x: x["rows"][-1]["acc_plus"], "auc": lambda x: area_under_curve(x["rows"]),
                           "comfort": lambda x: x["rows"][-1]["acc_comfort"]}[key]
                ax.scatter([x["rows"][-1].get("kl") or 0.0 for x in r["runs"]], [per_run(x) for x in r["runs"]],
                           s=10, color=color, alpha=0.35)
                ax.errorbar(r["kl"], r[key], xerr=r["kl_ci"], yerr=r[key + "_ci"], color=color, marker="o", capsize=3)
                short = f"kl {r['settings'].get('kl_coef', 0):g}" if uniform else f"a {r['settings'].get('alpha', 0):g}"
                ax.annotate(short, (r["kl"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.plot([], [], color=color, marker="o", label="uniform: alpha 0 or kl_coef 0" if uniform else
                    "prioritized: alpha > 0 (at its kl_coef)")
        # the uniform frontier: the best uniform group mean at no more KL than x
        uniform = sorted((r["kl"], r[key]) for r in table if is_uniform(r["settings"]))
        steps = [(x, max(y for x2, y in uniform if x2 <= x)) for x, _ in uniform]
        if steps and key != "comfort":
            right = max(r["kl"] for r in table) * 1.1
            ax.step([x for x, _ in steps] + [right], [y for _, y in steps] + [steps[-1][1]], where="post",
                    color="tab:blue", linestyle="--", linewidth=1, label="uniform frontier (group means)")
        ax.set(xlabel="KL/token to the reference at the end (k2 estimate, training batches)", ylabel=ylabel)
        ax.set_xlim(left=0)
    axes[0].set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def cmd_frontier(args):
    _, table, unfinished = load_groups(args.runs)
    lines = ["| runs | penalty | seeds | KL/token final (95% CI) | N+k final (95% CI) | validation final | area under "
             "curve (95% CI) | comfort zone final (95% CI) | uniform groups with >= accuracy at <= KL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: r["kl"]):
        uniform = is_uniform(r["settings"])
        verdict = "" if uniform else ("; ".join(f"{u['group']} ({u['final']:.1f} at {u['kl']:.4f})"
                                                for u in beaten_by(r, table)) or "none: above the frontier")
        lines.append(f"| {r['group']} | {'uniform' if uniform else 'prioritized'} | {r['seeds']} | "
                     f"{plus_minus(r['kl'], r['kl_ci'], 4)} | {plus_minus(r['final'], r['final_ci'])} | {plus_minus(r['val'], r['val_ci'])} | "
                     f"{plus_minus(r['auc'], r['auc_ci'])} | {plus_minus(r['comfort'], r['comfort_ci'])} | {verdict} |")
    write_table(args, "frontier", lines, unfinished)
    plot_frontier(table, os.path.join(args.results, args.name + ".png"), args.name)


# -----------------------------------------------------------------------------
# the whole study in one command

# what each budget runs; the small one takes about an hour on a 2-core CPU (README: "The whole study")
BUDGETS = {
    "small": {"n": 200, "probe_n": 50, "episodes": 1024, "eval_every": 256, "seeds": 3,
              "alphas": [0, 3, 10, 100, 1000, 10000], "alpha_seeds": 1, "pretraining_seeds": 1, "pretraining_plus": 1},
    "full": {"n": 1000, "probe_n": 50, "episodes": 2048, "eval_every": 512, "seeds": 5,
             "alphas": [0, 3, 10, 30, 100, 300, 1000, 10000], "alpha_seeds": 3, "pretraining_seeds": 3,
             "pretraining_plus": 1},
}
# Fig. 3 trains on N+1, not on the paper's N+2: none of our checkpoints solves one N+2 problem (0 of 100
# each for add3, add5, add7), so a 1/0 reward never differs within a group and RL has nothing to learn from
BEST_ALPHA = 100  # the prioritized setting of Fig. 4 (results/rl_sweep.md)
CHECKPOINTS = [f"checkpoints/add{n}.pt" for n in (3, 5, 7)]


def finished(run_dir, episodes):
    """Whether the rl.py run in run_dir has logged an evaluation at `episodes` or later."""
    rows = (read_run(run_dir) or {}).get("rows", [])
    return bool(rows) and rows[-1]["episode"] >= episodes


def run_rl(runs, budget, jobs):
    """Start the rl.py runs (out, name, flags) that have not finished yet, `jobs` at a time, each with its
    share of the CPU threads (on a GPU they share the GPU). Logs only, no model files. With jobs > 1 a
    run's output is kept and its summary line printed when it ends."""
    todo = []
    for out, name, flags in runs:
        if finished(os.path.join(out, name), budget["episodes"]):
            print(f"have {out}/{name}", file=sys.stderr)
        else:
            todo.append((out, name, flags))
    threads = max(1, torch.get_num_threads() // jobs)

    def launch(run):
        out, name, flags = run
        command = [sys.executable, "rl.py", "--episodes", str(budget["episodes"]), "--eval-every",
                   str(budget["eval_every"]), "--out", out, "--name", name, "--no-save", "--threads", str(threads),
                   # a run cut off continues from its last evaluation; one that never got there starts again
                   "--resume" if os.path.exists(os.path.join(out, name, "state.pt")) else "--force",
                   *budget.get("rl_flags", []), *flags]
        sys.stderr.write("$ " + " ".join(command[1:]) + "\n")  # one write: runs start side by side
        if jobs == 1:  # the run's own progress bar
            return run, subprocess.run(command).returncode, ""
        done = subprocess.run(command, capture_output=True, text=True)
        summary = [line for line in done.stdout.splitlines() if line.startswith("done:")]
        sys.stderr.write(f"{out}/{name}: " + (summary[-1] if summary else "failed") + "\n")
        return run, done.returncode, done.stderr

    failed = []
    with ThreadPoolExecutor(jobs) as pool:
        for (out, name, _), code, stderr in pool.map(launch, todo):
            if code != 0:
                failed.append(f"{out}/{name}")
                print(stderr[-2000:], file=sys.stderr)
    if failed:
        sys.exit(f"error: {len(failed)} rl.py run(s) failed: {', '.join(failed)} (commands printed above)")


def cmd_study(args):
    """Every table and figure: accuracy (Tables 4-5), the probe (Table 1, Fig. 5), standard against
    prioritized KL (Fig. 4), the alpha sweep (Fig. 6) and RL on N+2 after more pre-training (Fig. 3)."""
    budget = BUDGETS[args.budget]
    out, results = os.path.join(args.runs, f"study_{args.budget}"), os.path.join(args.results, f"study_{args.budget}")
    missing = [c for c in CHECKPOINTS if not os.path.exists(c)]
    if missing:
        sys.exit(f"error: missing {', '.join(missing)}: the study needs the shipped checkpoints (see checkpoints/README.md)")
    common = ["--device", args.device]
    base = [sys.executable, "analyze.py"]
    for step in (["accuracy", "--ckpt", *CHECKPOINTS, "--n", str(budget["n"])],
                 ["probe", "--ckpt", *CHECKPOINTS, "--n", str(budget["probe_n"])]):
        print("$ analyze.py " + " ".join(step), file=sys.stderr)
        if subprocess.run([*base, *step, *common, "--results", results], stdout=subprocess.DEVNULL).returncode:
            sys.exit(f"error: analyze.py {step[0]} failed")
    figures = study_runs(budget, out, common)
    run_rl([run for runs in (figures["fig6"], figures["fig3"]) for run in runs], budget, args.jobs)
    for name, runs in figures.items():
        cmd_curves(argparse.Namespace(runs=[os.path.join(o, n) for o, n, _ in runs], name=name, results=results))


def study_runs(budget, out, common):
    """The study's rl.py runs as (folder, name, flags), per figure. Fig. 6 and Fig. 4 share their runs:
    every alpha for alpha_seeds seeds, alpha 0 and BEST_ALPHA for more; Fig. 3 starts from each checkpoint."""
    sweep, fig4, fig3 = [], [], []
    for seed in range(budget["seeds"]):
        for alpha in budget["alphas"]:
            if seed < budget["alpha_seeds"] or alpha in (0, BEST_ALPHA):
                sweep.append((os.path.join(out, "alpha"), f"alpha{alpha}_seed{seed}",
                              ["--alpha", str(alpha), "--seed", str(seed), *common]))
                if alpha in (0, BEST_ALPHA):
                    fig4.append(sweep[-1])
    for seed in range(budget["pretraining_seeds"]):
        for ckpt in CHECKPOINTS:
            fig3.append((os.path.join(out, "pretraining"), f"{os.path.splitext(os.path.basename(ckpt))[0]}_seed{seed}",
                         ["--ckpt", ckpt, "--digits-plus", str(budget["pretraining_plus"]), "--alpha", "0",
                          "--seed", str(seed), *common]))
    return {"fig4": fig4, "fig6": sweep, "fig3": fig3}


def write_csv(path, rows):
    if not rows:
        return
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def write_text(path, text):
    """Write through a temporary file, so an interrupted run never leaves half a file behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="accuracy tables (identical and varying, K = N..N+extra)")
    acc.add_argument("--ckpt", nargs="+", default=["checkpoints/add7.pt"], help="one or more checkpoints")
    acc.add_argument("--extra", type=int, default=3, help="largest K is N + extra (default 3)")
    err = sub.add_parser("errors", help="where failed generations first go wrong")
    err.add_argument("--ckpt", default="checkpoints/add7.pt", help="checkpoint to probe")
    err.add_argument("--digits", type=int, default=None, help="K for the K+K problems (default N+1)")
    err.add_argument("--top", type=int, default=12, help="rows per table")
    err.add_argument("--show", type=int, default=3, help="failed examples to print")
    pro = sub.add_parser("probe", help="find the critical tokens; Table 1 (Delta J) and Fig. 5")
    pro.add_argument("--ckpt", nargs="+", default=[f"checkpoints/add{n}.pt" for n in (3, 5, 7)],
                     help="checkpoints to probe (default add3, add5, add7)")
    pro.add_argument("--drop", type=float, default=0.05, help="low certainty: Delta J below -drop (default 0.05)")
    pro.add_argument("--controls", type=int, default=4, help="random places tested per problem (default 4)")
    pro.add_argument("--low-tested", type=int, default=4, help="low-certainty tokens per problem tested for "
                     "decisiveness (default 4)")
    pro.add_argument("--samples", type=int, default=8, help="continuations sampled after the right and after the "
                     "wrong character, for decisiveness (default 8)")
    pro.add_argument("--top", type=int, default=12, help="rows per table")
    pro.add_argument("--alpha-n", type=int, default=200, help="problems for the table of weights J^alpha (default 200)")
    cur = sub.add_parser("curves", help="learning curves of rl.py runs, mean and 95%% interval over seeds")
    cur.add_argument("runs", nargs="+", help="run folders, or folders holding them (runs/sweep)")
    cur.add_argument("--name", default="curves", help="results/<name>.md and results/<name>.png")
    cur.add_argument("--results", default="results", help="folder for the table and the figure")
    fro = sub.add_parser("frontier", help="final accuracy against KL to the reference: uniform vs prioritized penalties")
    fro.add_argument("runs", nargs="+", help="run folders, or folders holding them")
    fro.add_argument("--name", default="frontier", help="results/<name>.md and results/<name>.png")
    fro.add_argument("--results", default="results", help="folder for the table and the figure")
    stu = sub.add_parser("study", help="every table and figure, runs included (small: about 1 h on 2 CPU cores)")
    stu.add_argument("--budget", default="small", choices=sorted(BUDGETS), help="small (default) or full")
    stu.add_argument("--runs", default="results", help="run logs go to <runs>/study_<budget>/ (small: commit them)")
    stu.add_argument("--results", default="results", help="tables and figures go to <results>/study_<budget>/")
    stu.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    stu.add_argument("--jobs", type=int, default=1, help="rl.py runs at once, each with its share of the CPU "
                     "threads or of the GPU (default 1)")
    for s, size in ((acc, 1000), (err, 1000), (pro, 50)):
        s.add_argument("--n", type=int, default=size, help=f"problems per set (default {size})")
        s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
        s.add_argument("--results", default="results", help="folder for CSV files")
    for s in (acc, err, pro, stu):
        s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = p.parse_args(argv)
    if getattr(args, "n", 1) < 1:
        p.error("--n must be at least 1")
    if getattr(args, "extra", 0) < 0:
        p.error("--extra must be at least 0")
    if getattr(args, "digits", None) is not None and args.digits < 1:
        p.error("--digits must be at least 1")
    threads = getattr(args, "threads", None)
    if getattr(args, "jobs", 1) < 1 or (threads is not None and threads < 1):
        p.error("--jobs and --threads must be at least 1")
    if getattr(args, "drop", 0.5) <= 0 or getattr(args, "controls", 0) < 0 or getattr(args, "alpha_n", 1) < 1:
        p.error("--drop must be positive, --controls at least 0 and --alpha-n at least 1")
    if getattr(args, "samples", 1) < 1 or getattr(args, "low_tested", 0) < 0:
        p.error("--samples must be at least 1 and --low-tested at least 0")
    return args


def main(argv=None):
    args = get_args(argv)
    set_threads(getattr(args, "threads", None))
    if args.command in ("curves", "frontier", "study"):  # read run logs, or start other scripts: no model here
        return {"curves": cmd_curves, "frontier": cmd_frontier, "study": cmd_study}[args.command](args)
    device = pick_device(args.device)
    dtype = autocast_dtype("auto", device)
    torch.manual_seed(0)
    {"accuracy": cmd_accuracy, "errors": cmd_errors, "probe": cmd_probe}[args.command](args, device, dtype)


if __name__ == "__main__":
    main()
