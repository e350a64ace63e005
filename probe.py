"""
An addition-only analysis (its controls are places on the scratchpad's lines and fields).

Looking inside a pre-trained model: where its generations first go wrong, and which tokens are critical
(the paper's Section 6: Table 1 and Fig. 5). Run through analyze.py:

    python analyze.py probe --ckpt checkpoints/add7.pt      # Table 1, decisiveness, J^alpha per alpha

J is rl.certainty with the correct scratchpad teacher-forced: Eq. 2 at temperature 1 by default, or what
--certainty and --certainty-temperature choose, as in rl.py (the size of Delta J depends strongly on that
choice); Delta J is a character's J minus the mean J of the rest of its text; a token is decisive when
continuations sampled after the right character succeed clearly more often than after the model's likeliest
wrong one (README: glossary).
"""
import os
import sys
from collections import Counter

import torch

import data
import generation
import errors
import metrics
from model import load_or_exit, pretrain_digits
import rl
from files import pyplot, save_figure, write_text
from runtime import mixed_precision


# -----------------------------------------------------------------------------
# the critical-token probe (paper section 6, Table 1, Fig. 5)


def scratchpad_certainty(model, problems, device, dtype, certainty=rl.certainty):
    """For each problem, the model's certainty J (`certainty`: logits -> J per row) at every character of
    the correct scratchpad,
    teacher-forced (the same states as its own generation up to its first error), and the character it
    would most likely write there instead of the right one. Returns a list of (J, wrong) pairs."""
    with mixed_precision(device, dtype):
        logits = metrics.completion_logits(model, problems)
    out = []
    for (a, b), rows in zip(problems, logits):
        J = certainty(rows).cpu()
        truth = torch.tensor(data.encode(data.scratchpad(a, b)), device=rows.device)
        rows[torch.arange(len(rows)), truth] = float("-inf")
        rows[:, data.PAD_ID] = float("-inf")  # the right character and padding are not alternatives
        out.append((J, [data.VOCAB[t] for t in rows.argmax(-1).tolist()]))
    return out


@torch.no_grad()
def continue_from(model, problems, prefixes, device, dtype, temperature=0.0, generator=None, batch_size=256,
                  draft=True):
    """The completion prefix + the model's continuation of prompt + prefix (greedy, or sampled at
    `temperature` with `generator`), for each pair."""
    order = sorted(range(len(problems)), key=lambda i: len(prefixes[i]) - data.sequence_length(problems[i]))
    completions = [None] * len(problems)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch, heads = [problems[i] for i in chunk], [prefixes[i] for i in chunk]
        idx = data.prompt_batch(batch, device, prefixes=heads)
        room = min(max(generation.room_for((a, b)) - len(h) for (a, b), h in zip(batch, heads)),
                   model.config.block_size - idx.size(1))
        with mixed_precision(device, dtype):
            out = model.generate(idx, max(1, room), temperature=temperature, generator=generator,
                                 stop=data.Stop,
                                 draft=data.draft_batch(batch, device, prefixes=heads) if draft else None)
        for i, head, row in zip(chunk, heads, out[:, idx.size(1):].tolist()):
            completions[i] = head + data.decode(row)
    return completions


def probe(model, n, problems, greedy, device, dtype, drop=0.05, controls=4, samples=8, low_tested=4,
          temperature=1.0, seed=0, draft=True, certainty=rl.certainty):
    """Test tokens on the correct path of each problem, chosen in ways that do and do not look at the
    certainty J, for the two properties of a critical token:
      low certainty: Delta J = J(token) - mean J(other tokens of the text) below -drop;
      decisive: `samples` continuations sampled at `temperature` after the right character succeed
          clearly more often than after the model's most likely wrong one (95% Wilson intervals apart).
    Delta J is measured at the paper's n+1 commas (every line), the first wrong character of each failed
    greedy completion in `greedy`, every low-certainty token and `controls` uniformly random places per
    problem (whatever their J). Decisiveness, which costs 2 x `samples` generations per token, is tested
    at the commas of lines 1-3, the first errors, the random places, up to `low_tested` random
    low-certainty tokens per problem that are not first errors (those enter the low-certainty set by
    construction, so they are counted apart), and for each of these a random place on the same line and
    field of the scratchpad ("matched": its control). "decisive" is None where untested. Returns one dict
    per token ("why": how it was chosen) and {problem: J at every character}. certainty: logits -> J per
    row (rl.certainty with the chosen definition and temperature)."""
    rng = torch.Generator().manual_seed(seed)
    tested, j_by_problem = [], {}
    certainties = scratchpad_certainty(model, problems, device, dtype, certainty)
    for (a, b), text, (J, wrong) in zip(problems, greedy, certainties):
        j_by_problem[(a, b)] = J.tolist()
        delta = delta_j(J)
        end = data.scratchpad(a, b).index("</scratch>")  # the answer line only copies A: not probed
        places = [errors.locate(a, b, t)[0] for t in range(len(J))]
        why = {}
        for t in data.critical_positions((a, b), n, lines=None):
            why.setdefault(t, set()).add("every line")
        for t in data.critical_positions((a, b), n, lines=3):
            why.setdefault(t, set()).add("paper")
        error = data.first_error((a, b), text)
        if error is not None and error < len(J):
            why.setdefault(error, set()).add("first error")
        for t in range(end):
            if delta[t] < -drop:
                why.setdefault(t, set()).add("low")
        for t in torch.randperm(end, generator=rng)[:controls].tolist():
            why.setdefault(t, set()).add("random")
        low = sorted(t for t, reasons in why.items() if "low" in reasons and "first error" not in reasons)
        test_low = [low[i] for i in torch.randperm(len(low), generator=rng)[:low_tested].tolist()]
        for t in test_low:  # its control: a random place where the scratchpad does the same job
            same = [u for u in range(end) if u != t and same_place(places[u], places[t])]
            if same:
                pick = same[torch.randint(len(same), (1,), generator=rng).item()]
                why.setdefault(pick, set()).add("matched")
        always = {"paper", "first error", "random", "matched"}  # tested for decisiveness wherever they fall
        for t, reasons in sorted(why.items()):
            tested.append({"problem": (a, b), "t": t, "J": J[t].item(), "delta": delta[t].item(),
                           "why": reasons, "low": delta[t].item() < -drop, "wrote": wrong[t], **places[t],
                           "test": t in test_low or bool(reasons & always)})
    # decisiveness: the same number of sampled continuations after the right and after the wrong character
    for row in tested:
        row["decisive"] = row["critical"] = None
    tested, untested = [r for r in tested if r["test"]], [r for r in tested if not r["test"]]
    truths = [data.scratchpad(*row["problem"]) for row in tested]
    probs = [row["problem"] for row in tested for _ in range(samples)]
    generator = torch.Generator(device).manual_seed(seed)
    prefixes = {"right_wins": lambda truth, row: truth[:row["t"] + 1],
                "wrong_wins": lambda truth, row: truth[:row["t"]] + row["wrote"]}
    for key, prefix in prefixes.items():
        heads = [prefix(truth, row) for truth, row in zip(truths, tested) for _ in range(samples)]
        texts = continue_from(model, probs, heads, device, dtype, temperature, generator, draft=draft)
        for i, row in enumerate(tested):
            row[key] = sum(data.reward(row["problem"], c) for c in texts[i * samples:(i + 1) * samples])
    for row in tested:
        row["decisive"] = decisive(row["right_wins"], row["wrong_wins"], samples)
        row["critical"] = row["low"] and row["decisive"]
    return sorted(tested + untested, key=lambda r: (problems.index(r["problem"]), r["t"])), j_by_problem


def same_place(place, other):
    """Whether two characters do the same job in the scratchpad: the same line and field (errors.locate)."""
    return place["line"] == other["line"] and place["field"] == other["field"]


def decisive(right_wins, wrong_wins, samples):
    """Whether continuations after the right character succeed clearly more often than after the wrong one:
    the 95% Wilson intervals of the two success rates do not overlap."""
    return metrics.wilson_interval(right_wins, samples)[0] > metrics.wilson_interval(wrong_wins, samples)[1]


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
    ("low certainty, first errors apart (selected by Delta J)",
     lambda r: r["low"] and "first error" not in r["why"]),
    ("random places on the line and field of a tested low-certainty one", lambda r: "matched" in r["why"]),
    ("low certainty and decisive, first errors apart (selected by Delta J)",
     lambda r: r["critical"] and "first error" not in r["why"]),
]


def table1(tested, j_by_problem, drop):
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
        rows.append(row(name, [r["delta"] for r in chosen],
                        f"{sum(r['decisive'] for r in judged)}/{len(judged)}"))
    every = [d for J in j_by_problem.values() for d in delta_j(torch.tensor(J)).tolist()]
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
    plt = pyplot()
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
    """probe.md: Table 1 of every checkpoint in one summary, then per checkpoint its Table 1 in full,
    the decisiveness baseline, where the critical tokens are, and J^alpha per alpha; Fig. 5 as a figure."""
    errors.addition_only("probe")

    def certainty(logits):  # J as rl.py's flags define it
        return rl.certainty(logits, args.certainty, args.certainty_temperature)
    summary = ["| checkpoint | N | N+1 greedy accuracy | failed texts that first err at the paper's comma | "
               + " | ".join(name for name, _ in TABLE1_ROWS) + " | every token |",
               "|---" * (len(TABLE1_ROWS) + 5) + "|"]
    report = []
    for path in args.ckpt:
        model, meta = load_or_exit(path, device)
        n = pretrain_digits(meta, path)
        if data.longest_sequence(n + 1) > model.config.block_size:
            sys.exit(f"error: {path} has too few positions for {n + 1}-digit problems")
        problems = data.eval_set("identical", n + 1, args.n)
        completions = metrics.solve(model, problems, device, dtype, draft=args.draft)
        accuracy = generation.percent_correct(completions, problems)
        tested, j_by_problem = probe(model, n, problems, completions, device, dtype, drop=args.drop,
                                     controls=args.controls, samples=args.samples, low_tested=args.low_tested,
                                     draft=args.draft, certainty=certainty)
        rows = table1(tested, j_by_problem, args.drop)
        errors_at = [r for r in tested if "first error" in r["why"]]
        at_comma = f"{sum('paper' in r['why'] for r in errors_at)} of {len(errors_at)}"
        cells = " | ".join(map(short_cell, rows))
        summary.append(f"| {path} | {n} | {accuracy:.1f}% | {at_comma} | {cells} |")
        critical = [r for r in tested if r["critical"]]
        report += [f"## {path} (N = {n}): {len(problems)} problems of {n + 1}+{n + 1} digits, greedy "
                   f"accuracy {accuracy:.1f}%", "", *table1_markdown(rows, args.drop), "",
                   *decisiveness_note(tested, args.samples, accuracy), "",
                   *places_markdown(critical, args.top), "",
                   *alpha_markdown(model, n, args.alpha_n, device, dtype, args.draft, certainty), ""]
        if critical:
            fig5(model, critical[0]["problem"], problems, completions, path, args.results, device, dtype,
                 certainty)
    definition = {"entropy": "Eq. 2, the normalised negentropy",
                  "maxprob": "1 + log max p / log|V|, the paper's code's"}[args.certainty]
    text = "\n".join(["# Critical-token probe (`python analyze.py probe`)", "",
                      f"Certainty J: {definition}, at temperature {args.certainty_temperature:g}.", "",
                      TABLE1_NOTE, "", *summary, "", *report])
    write_text(os.path.join(args.results, "probe.md"), text + "\n")
    print(text)


TABLE1_NOTE = ("Table 1: Delta J = certainty on the token minus the mean certainty on the other tokens of "
               "its text, mean +- sd (n tokens), for tokens chosen in different ways. The two low-certainty "
               "columns choose by Delta J (below -drop by construction); the paper reports critical tokens.")


def short_cell(row):
    """A Table 1 row as one cell of the summary: mean +- sd (n)."""
    return "n/a" if row["n"] == 0 else f"{row['mean']:+.3f} +- {row['sd']:.3f} (n={row['n']})"


def table1_markdown(rows, drop):
    lines = ["| tokens chosen as | tokens | Delta J (mean +- sd) | Delta J below -" f"{drop:g} | decisive |",
             "|---|---|---|---|---|"]
    for r in rows:
        measured = r["n"] > 0
        lines.append(f"| {r['positions']} | {r['n']} | " + (f"{r['mean']:+.4f} +- {r['sd']:.4f} | "
                     f"{100 * r['below']:.0f}%" if measured else "n/a | n/a") + f" | {r['decisive']} |")
    return lines


def decisiveness_note(tested, samples, accuracy):
    """What 'decisive' means, and how often continuations succeed at random places (the baseline)."""
    randoms = [r for r in tested if "random" in r["why"]]
    right = sum(r["right_wins"] for r in randoms) / max(1, len(randoms) * samples)
    wrong = sum(r["wrong_wins"] for r in randoms) / max(1, len(randoms) * samples)
    lines = [f"Decisive = {samples} continuations sampled at T = 1 after the right character succeed "
             f"clearly more often (95% Wilson intervals apart) than {samples} after the model's most likely "
             f"wrong one. The baseline, at the random places: after the right character "
             f"{100 * right:.0f}% of the continuations succeed, after the wrong one {100 * wrong:.0f}%."]
    if accuracy == 0 or right < 0.05:
        lines.append(f"This model solves {accuracy:.0f}% of these problems: its continuations fail after the "
                     "right character too, so the test cannot tell decisive tokens from the others here.")
    return lines


def places_markdown(critical, top):
    """The `top` places (line, field, digit) that hold the most critical tokens."""
    lines = ["Where the low-certainty decisive tokens are:", "",
             "| line | field | digits before | right -> likely wrong (most common) | tokens | mean Delta J | "
             "paper's place |", "|---|---|---|---|---|---|---|"]
    places = {}
    for r in critical:
        places.setdefault((r["line"], r["field"], r["index"]), []).append(r)
    for (line, field, index), members in sorted(places.items(), key=lambda item: -len(item[1]))[:top]:
        (right_char, wrote), _ = Counter((r["expected"], r["wrote"]) for r in members).most_common(1)[0]
        lines.append(f"| {line} | {field} | {'' if index is None else index} | {right_char!r} -> {wrote!r} | "
                     f"{len(members)} | {sum(r['delta'] for r in members) / len(members):+.3f} | "
                     f"{'yes' if 'paper' in members[0]['why'] else ''} |")
    return lines


def alpha_markdown(model, n, size, device, dtype, draft=True, certainty=rl.certainty):
    """Which alpha does what: the weight J^alpha where this model decides its errors, and elsewhere."""
    problems = data.eval_set("rl", 1, size, n=n)
    with mixed_precision(device, dtype):
        completions = generation.complete(model, problems, device=device, draft=draft)
        decisive, elsewhere = metrics.certainty_at_errors(model, problems, completions, certainty)
    lines = [f"Which alpha does what: the weight J^alpha of the KL term on {size} held-out 'N+1' problems "
             f"(rl.py's training distribution), at the first wrong character of the {len(decisive)} failed "
             f"greedy generations and on average over the {len(elsewhere)} characters written right:", "",
             "| alpha | " + " | ".join(f"{a:g}" for a in ALPHAS) + " |", "|---" * (len(ALPHAS) + 1) + "|"]
    for name, values in (("at the first error", decisive), ("elsewhere", elsewhere)):
        weights = [lambda j, run=rl.args_with(alpha=a): rl.kl_weight(j, run) for a in ALPHAS]
        cells = ["n/a" if not values else f"{metrics.mean_weight(values, weight):.3f}" for weight in weights]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    below = [sum(j < metrics.UNCERTAIN for j in values) for values in (decisive, elsewhere)]
    return lines + ["", f"J below {metrics.UNCERTAIN:g}, where rl.py splits the KL (metrics.kl_split): "
                        f"{below[0]} of {len(decisive)} first-error states, {below[1]} of {len(elsewhere)} "
                        "others."]


def fig5(model, problem, problems, completions, path, results, device, dtype, certainty=rl.certainty):
    """Fig. 5: a problem with a critical token, as the model writes it, each character coloured by J."""
    a, b = problem
    text = completions[problems.index((a, b))]
    with mixed_precision(device, dtype):
        J = certainty(metrics.completion_logits(model, [(a, b)], [text])[0]).cpu().tolist()
    low_j = min(J)
    if sys.stdout.isatty():  # colours only for a terminal, not for a file or a pipe
        print(f"\n{path}: {a}+{b}, coloured by certainty J (red = {low_j:.2f}, white = 1), "
              f"{'right' if data.reward((a, b), text) else 'wrong'} answer\n{ansi_certainty(text, J, low_j)}")
    stem = os.path.splitext(os.path.basename(path))[0]
    plot_certainty(text, J, low_j, os.path.join(results, f"certainty_{stem}.png"),
                   f"{stem}: {a}+{b}, each character coloured by the certainty J of the model writing it")
