"""
Look inside the models, and make every table and figure of the paper: one command, six subcommands.

    python analyze.py accuracy --ckpt checkpoints/add7.pt [--n 1000]
        greedy exact-match accuracy on held-out 'identical' (K+K) and 'varying' (K+M, M <= K)
        problems, K = N..N+3, 95% intervals (paper Tables 4 and 5; Fig. 2: accuracy.png)
    python analyze.py errors --ckpt checkpoints/add7.pt [--digits 8] [--n 1000]
        for each failed K+K generation, the first character that differs from the correct scratchpad:
        which line, which field (operand list, A, carry, sum) and what was written instead
    python analyze.py probe [--ckpt checkpoints/add3.pt checkpoints/add5.pt checkpoints/add7.pt] [--n 50]
        the critical tokens: Table 1 (Delta J at places chosen with and without J), decisiveness,
        Fig. 5 (a generation coloured by J), the weight J^alpha per alpha
    python analyze.py curves runs/sweep [--name curves]
        learning curves of rl.py runs grouped over seeds: final N+k accuracy, area under the curve,
        comfort zone, damage, mean and 95% t-interval (Fig. 4; Fig. 6 with three or more alphas)
    python analyze.py frontier runs/sweep [--name frontier]
        final accuracy against KL to the reference: uniform against prioritized penalties
    python analyze.py study [--budget small|full] [--jobs 2]
        all of the above, rl.py runs included: Fig. 4, Fig. 6, Fig. 3 in results/study_<budget>/

The measurements are here; how runs are compared over seeds (lab/curves.py, lab/frontier.py), how tables
and figures are written (lab/report.py) and the study's scheduling (lab/study.py) are in the package.
"""
import argparse
import hashlib
import os
import sys

import torch

import data
import rl
from lab import generation, metrics, report
from lab.curves import cmd_curves
from lab.files import hold_lock, release_locks, write_text
from lab.frontier import cmd_frontier
from lab.console import run_script
from lab.runtime import DEVICE_HELP, generation_dtype, mixed_precision, number, pick_device, set_threads
from lab.scratchpad import addition_only, describe_error, locate
from lab.study import BUDGETS, cmd_study
from model import load_or_exit, pretrain_digits


# -----------------------------------------------------------------------------
# accuracy tables (paper Tables 4 and 5)

def accuracy_cell(model, kind, k, n, device, dtype, draft=True):
    """Greedy exact-match accuracy on n held-out problems of one set and size: a row of Tables 4-5."""
    problems = data.eval_set(kind, k, n)
    completions = metrics.solve(model, problems, device, dtype, draft=draft)
    wins = sum(data.reward(problem, c) for c, problem in zip(completions, problems))
    low, high = metrics.wilson_interval(wins, len(problems))
    return {"set": kind, "K": k, "n": len(problems), "accuracy": round(100 * wins / len(problems), 1),
            "ci_low": round(low, 1), "ci_high": round(high, 1)}


def cmd_accuracy(args, device, dtype):
    # each cell is appended to --cache as soon as it is measured: a cut-off run, rerun, starts where it
    # stopped (the key holds the checkpoint's hash, so a retrained file is measured again)
    rows, cache = [], report.read_cache(args.cache)
    for path in args.ckpt:
        model, meta = load_or_exit(path, device)
        n = pretrain_digits(meta, path)
        digest = hashlib.sha1(open(path, "rb").read()).hexdigest()[:16]
        for kind in ("identical", "varying"):
            for k in range(n, n + args.extra + 1):
                if data.longest_sequence(k) > model.config.block_size:
                    continue
                key = f"{digest} {kind} {k} {args.n} {str(device).split(':')[0]} {dtype}"
                cell = cache.get(key)
                if cell is None:
                    cell = accuracy_cell(model, kind, k, args.n, device, dtype, args.draft)
                    report.append_to_cache(args.cache, key, cell)
                rows.append({"checkpoint": path, "N": n, **cell})
                print(f"{path} {kind} K={k}: {cell['accuracy']:.1f}%{' (cached)' if key in cache else ''}",
                      file=sys.stderr)
    lines = report.accuracy_lines(rows, args.ckpt, args.extra)
    print("\n".join(lines))
    report.write_csv(os.path.join(args.results, "accuracy.csv"), rows)
    write_text(os.path.join(args.results, "accuracy.md"),
               f"`python analyze.py accuracy --ckpt {' '.join(args.ckpt)} --extra {args.extra} --n {args.n}` "
               f"(greedy exact match, Wilson 95% intervals)\n\n" + "\n".join(lines) + "\n")
    report.plot_accuracy(rows, os.path.join(args.results, "accuracy.png"))


# -----------------------------------------------------------------------------
# where failed generations first go wrong

def cmd_errors(args, device, dtype):
    addition_only("errors")
    model, meta = load_or_exit(args.ckpt, device)
    n = pretrain_digits(meta, args.ckpt)
    k = args.digits or n + 1
    if data.longest_sequence(k) > model.config.block_size:
        sys.exit(f"error: {k}-digit problems do not fit {args.ckpt} ({model.config.block_size} positions); "
                 f"choose a smaller --digits")
    problems = data.eval_set("identical", k, args.n)
    completions = metrics.solve(model, problems, device, dtype, draft=args.draft)
    failures = [(c, a, b) for c, (a, b) in zip(completions, problems) if not data.reward((a, b), c)]
    # never None: a perfect scratchpad ends right
    first_errors = [describe_error(c, a, b) for c, a, b in failures]
    in_lists = [e for e in first_errors if e["field"].startswith("operand") and e["line"] <= 3]
    at_critical = {lines: sum(e["offset"] in data.critical_positions((a, b), n, lines)
                              for e, (c, a, b) in zip(first_errors, failures)) for lines in (3, None)}
    accuracy = 100 * (1 - len(failures) / len(problems))
    print(f"{args.ckpt}: {k}-digit operands, greedy accuracy {accuracy:.1f}% ({len(failures)} of "
          f"{len(problems)} failed)")
    if failures:
        def share(count):
            return f"{count} of {len(failures)} failures ({100 * count / len(failures):.1f}%)"
        print(f"- first error in an operand list on lines 1-3: {share(len(in_lists))}")
        print(f"- first error at the paper's critical comma on lines 1-3: {share(at_critical[3])}")
        print("- first error at the critical comma of any line (a list longer than pre-training ever showed "
              f"on that line, closed where pre-training closed it): {share(at_critical[None])}")
        print("\n".join(report.errors_lines(first_errors, args.top)))
    for c, a, b in failures[:args.show]:
        print(f"\nclaims {a}+{b}={data.parse_answer(c)}, truth {a + b}; first error: "
              f"{describe_error(c, a, b)}")


# -----------------------------------------------------------------------------
# the critical-token probe (paper section 6, Table 1, Fig. 5)


def scratchpad_certainty(model, problems, device, dtype, certainty=rl.certainty):
    """For each problem, the model's certainty J (`certainty`: logits -> J per row) at every character of
    the correct scratchpad, teacher-forced (the same states as its own generation up to its first error),
    and the character it would most likely write there instead of the right one: a list of (J, wrong)."""
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
        places = [locate(a, b, t)[0] for t in range(len(J))]
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
        texts = generation.continue_from(model, probs, heads, device, dtype, temperature, generator,
                                         draft=draft)
        for i, row in enumerate(tested):
            row[key] = sum(data.reward(row["problem"], c) for c in texts[i * samples:(i + 1) * samples])
    for row in tested:
        row["decisive"] = decisive(row["right_wins"], row["wrong_wins"], samples)
        row["critical"] = row["low"] and row["decisive"]
    return sorted(tested + untested, key=lambda r: (problems.index(r["problem"]), r["t"])), j_by_problem


def same_place(place, other):
    """Whether two characters do the same job in the scratchpad: the same line and field (lab/scratchpad.py
    locate)."""
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


ALPHAS = [0, 1, 3, 10, 30, 100, 300, 1000, 10000]


def cmd_probe(args, device, dtype):
    """probe.md: Table 1 of every checkpoint in one summary, then per checkpoint its Table 1 in full,
    the decisiveness baseline, where the critical tokens are, and J^alpha per alpha; Fig. 5 as a figure."""
    addition_only("probe")

    def certainty(logits):  # J as rl.py's flags define it
        return rl.certainty(logits, args.certainty, args.certainty_temperature)
    summary = ["| checkpoint | N | N+1 greedy accuracy | failed texts that first err at the paper's comma | "
               + " | ".join(name for name, _ in TABLE1_ROWS) + " | every token |",
               "|---" * (len(TABLE1_ROWS) + 5) + "|"]
    sections = []
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
        cells = " | ".join(map(report.short_cell, rows))
        summary.append(f"| {path} | {n} | {accuracy:.1f}% | {at_comma} | {cells} |")
        critical = [r for r in tested if r["critical"]]
        sections += [f"## {path} (N = {n}): {len(problems)} problems of {n + 1}+{n + 1} digits, greedy "
                   f"accuracy {accuracy:.1f}%", "", *report.table1_markdown(rows, args.drop), "",
                   *report.decisiveness_note(tested, args.samples, accuracy), "",
                   *report.places_markdown(critical, args.top), "",
                   *alpha_markdown(model, n, args.alpha_n, device, dtype, args.draft, certainty), ""]
        if critical:
            fig5(model, critical[0]["problem"], problems, completions, path, args.results, device, dtype,
                 certainty)
    definition = {"entropy": "Eq. 2, the normalised negentropy",
                  "maxprob": "1 + log max p / log|V|, the paper's code's"}[args.certainty]
    text = "\n".join(["# Critical-token probe (`python analyze.py probe`)", "",
                      f"Certainty J: {definition}, at temperature {args.certainty_temperature:g}.", "",
                      report.TABLE1_NOTE, "", *summary, "", *sections])
    write_text(os.path.join(args.results, "probe.md"), text + "\n")
    print(text)


def alpha_markdown(model, n, size, device, dtype, draft=True, certainty=rl.certainty):
    """Which alpha does what: the weight J^alpha where this model decides its errors, and elsewhere."""
    problems = data.eval_set("rl", 1, size, n=n)
    with mixed_precision(device, dtype):
        completions = generation.complete(model, problems, device=device, draft=draft)
        at_errors, elsewhere = metrics.certainty_at_errors(model, problems, completions, certainty)
    lines = [f"Which alpha does what: the weight J^alpha of the KL term on {size} held-out 'N+1' problems "
             f"(rl.py's training distribution), at the first wrong character of the {len(at_errors)} failed "
             f"greedy generations and on average over the {len(elsewhere)} characters written right:", "",
             "| alpha | " + " | ".join(f"{a:g}" for a in ALPHAS) + " |", "|---" * (len(ALPHAS) + 1) + "|"]
    for name, values in (("at the first error", at_errors), ("elsewhere", elsewhere)):
        weights = [lambda j, run=rl.args_with(alpha=a): rl.kl_weight(j, run) for a in ALPHAS]
        cells = ["n/a" if not values else f"{metrics.mean_weight(values, weight):.3f}" for weight in weights]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    below = [sum(j < metrics.UNCERTAIN for j in values) for values in (at_errors, elsewhere)]
    return lines + ["", f"J below {metrics.UNCERTAIN:g}, where rl.py splits the KL (metrics.kl_split): "
                        f"{below[0]} of {len(at_errors)} first-error states, {below[1]} of {len(elsewhere)} "
                        "others."]


def fig5(model, problem, problems, completions, path, results, device, dtype, certainty=rl.certainty):
    """Fig. 5: a problem with a critical token, as the model writes it, each character coloured by J."""
    a, b = problem
    text = completions[problems.index((a, b))]
    with mixed_precision(device, dtype):
        J = certainty(metrics.completion_logits(model, [(a, b)], [text])[0]).cpu().tolist()
    report.show_certainty(text, J, (a, b), path, results, right=data.reward((a, b), text))


ANALYSIS = "runs/analysis"  # where tables and figures go unless --out says otherwise (results/: committed)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="accuracy tables (identical and varying, K = N..N+extra)")
    acc.add_argument("--ckpt", nargs="+", default=["checkpoints/add7.pt"], help="one or more checkpoints")
    acc.add_argument("--extra", type=number("--extra", int, at_least=0, at_most=20), default=3,
                     help="largest K is N + extra (default 3, at most 20)")
    acc.add_argument("--cache", default="runs/accuracy_cache.jsonl",
                     help="cells measured so far, reused by a rerun ('' to switch off)")
    err = sub.add_parser("errors", help="where failed generations first go wrong")
    err.add_argument("--ckpt", default="checkpoints/add7.pt", help="checkpoint to probe")
    err.add_argument("--digits", type=number("--digits", int, at_least=1), default=None,
                     help="K for the K+K problems (default N+1)")
    err.add_argument("--show", type=int, default=3, help="failed examples to print")
    pro = sub.add_parser("probe", help="find the critical tokens; Table 1 (Delta J) and Fig. 5")
    pro.add_argument("--ckpt", nargs="+", default=[f"checkpoints/add{n}.pt" for n in (3, 5, 7)],
                     help="checkpoints to probe (default add3, add5, add7)")
    pro.add_argument("--drop", type=number("--drop", above=0), default=0.05,
                     help="low certainty: Delta J below -drop (default 0.05)")
    pro.add_argument("--controls", type=number("--controls", int, at_least=0), default=4,
                     help="random places tested per problem (default 4)")
    pro.add_argument("--low-tested", type=number("--low-tested", int, at_least=0), default=4,
                     help="low-certainty tokens per problem tested for decisiveness (default 4)")
    pro.add_argument("--samples", type=number("--samples", int, at_least=1), default=8, help="continuations "
                     "sampled after the right and after the wrong character, for decisiveness (default 8)")
    pro.add_argument("--alpha-n", type=number("--alpha-n", int, at_least=1), default=200,
                     help="problems for the table of weights J^alpha (default 200)")
    pro.add_argument("--certainty", default="entropy", choices=["entropy", "maxprob"],
                     help="J as in rl.py: Eq. 2 (entropy, default) or the paper's code's maxprob")
    pro.add_argument("--certainty-temperature", type=number("--certainty-temperature", at_least=0.01),
                     default=1.0, help="temperature of the distribution J is taken from, as in rl.py")
    cur = sub.add_parser("curves", help="learning curves of rl.py runs, mean and 95%% interval over seeds")
    cur.add_argument("--baseline", default=None, help="add paired per-seed differences against the group "
                     "with these settings, e.g. alpha=0,kl_coef=10 (KEY=VALUE as in config.json)")
    fro = sub.add_parser("frontier",
                         help="final accuracy against KL to the reference: uniform vs prioritized penalties")
    for s, name in ((cur, "curves"), (fro, "frontier")):
        s.add_argument("runs", nargs="+", help="run folders, or folders holding them (runs/sweep)")
        s.add_argument("--name", default=name, help=f"<out>/<name>.md and <out>/<name>.png (default {name})")
    stu = sub.add_parser("study",
                         help="every table and figure, runs included (small: about 1 h on 2 CPU cores)")
    stu.add_argument("--budget", default="small", choices=sorted(BUDGETS), help="small (default) or full")
    stu.add_argument("--runs", default="runs",
                     help="run logs go to <runs>/study_<budget>/ (results: the committed small study's)")
    stu.add_argument("--print-commands", action="store_true",
                     help="print the study's rl.py runs, one command a line with one thread each (for GNU "
                     "parallel or a cluster's job array), and run nothing")
    stu.add_argument("--jobs", type=number("--jobs", int, at_least=1), default=1, help="rl.py runs at once, "
                     "each with its share of the CPU threads or of the GPU (default 1)")
    for s, size in ((acc, 1000), (err, 1000), (pro, 50)):
        s.add_argument("--n", type=number("--n", int, at_least=1, at_most=10_000), default=size,
                       help=f"problems per set (default {size}, at most 10000)")
        s.add_argument("--draft", action=argparse.BooleanOptionalAction, default=True,
                       help="decode along the correct text (the same texts, faster); --no-draft: token by "
                       "token")
    for s in (err, pro):
        s.add_argument("--top", type=int, default=12, help="rows per table")
    for s in (acc, err, pro, stu):
        s.add_argument("--device", default="auto", help=DEVICE_HELP)
        s.add_argument("--threads", type=number("--threads", int, at_least=1), default=None,
                       help="CPU threads (default: all cores)")
    for s in (acc, err, pro, cur, fro, stu):
        s.add_argument("--out", "--results", dest="results", default=ANALYSIS, help=f"folder for the tables "
                       f"and figures (default {ANALYSIS}; results/<experiment>: the committed ones)")
    args = p.parse_args(argv)
    name = getattr(args, "name", None)
    if name is not None and (os.path.basename(name) != name or name in ("", ".", "..")):
        p.error("--name must be a plain file name (no '/'): the outputs are <out>/<name>.md and .png")
    return args


def main(argv=None):
    args = get_args(argv)
    set_threads(getattr(args, "threads", None))
    try:
        if args.command != "study":  # the only writer of its outputs (study's runs lock their own)
            output = args.name if args.command in ("curves", "frontier") else args.command
            hold_lock(os.path.join(args.results, f".{output}.lock"), f"{args.results}/{output}.*")
        run_command(args)
    finally:
        release_locks()


def is_uniform(settings):
    """No penalty, or one whose weighting (rl.kl_weight) gives every certainty the same weight (alpha 0)."""
    run = rl.args_with(**settings)
    weights = {float(rl.kl_weight(j, run)) for j in (0.0, 0.25, 0.5, 0.75, 1.0)}
    return settings.get("kl_coef", 0) == 0 or len(weights) == 1


RL_DEFAULTS = vars(rl.args_with())  # a run made before a flag existed ran at its default


def run_command(args):
    if args.command == "curves":  # these read run logs, or start other scripts: no model
        return cmd_curves(args, RL_DEFAULTS)
    if args.command == "frontier":
        return cmd_frontier(args, RL_DEFAULTS, is_uniform)
    if args.command == "study":
        return cmd_study(args, RL_DEFAULTS)
    device = pick_device(args.device)
    dtype = generation_dtype("auto", device)  # these commands generate: float32, as rl.py's evaluations
    torch.manual_seed(0)
    {"accuracy": cmd_accuracy, "errors": cmd_errors, "probe": cmd_probe}[args.command](args, device, dtype)


if __name__ == "__main__":
    run_script(main)
