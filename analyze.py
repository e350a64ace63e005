"""
Look inside the models: accuracy tables and where generations go wrong.

    python analyze.py accuracy --ckpt checkpoints/add7.pt [--n 1000]
        greedy exact-match accuracy on held-out 'identical' (K+K) and 'varying' (K+M, M <= K)
        problems, K = N..N+3, with 95% confidence intervals (paper Tables 4 and 5)
    python analyze.py errors --ckpt checkpoints/add7.pt [--digits 8] [--n 1000]
        for each failed K+K generation, the first character that differs from the correct scratchpad:
        which line, which field (operand list, A, carry, sum) and what was written instead
    python analyze.py curves runs/sweep [--name curves]
        learning curves of rl.py runs: runs that differ only in the seed are grouped; final N+k accuracy
        and area under the curve, mean and 95% t-interval over seeds (results/<name>.md and .png)
"""
import argparse
import csv
import io
import json
import math
import os
import sys
from collections import Counter

import torch

import data
from model import CheckpointError, load_checkpoint
from pretrain import autocast_dtype, mixed_precision, pick_device


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

def first_error(completion, a, b):
    """None if the completion is the exact scratchpad, else a dict describing the first wrong character."""
    truth = data.scratchpad(a, b)
    i = next((i for i, (x, y) in enumerate(zip(completion, truth)) if x != y), None)
    if i is None:
        if len(completion) >= len(truth):
            return None
        i = len(completion)  # stopped early (ran out of room)
    line_no = truth.count("\n", 0, i) - 1  # 1 = first line after '<scratch>'
    line_start = truth.rfind("\n", 0, i) + 1
    line_end = truth.find("\n", i)
    line = truth[line_start:line_end if line_end >= 0 else len(truth)]
    col = i - line_start
    field, index = _field(line, col)
    wrote = completion[i] if i < len(completion) else "(end)"
    return {"offset": i, "line": line_no, "field": field, "index": index, "expected": truth[i], "wrote": wrote,
            "kind": _kind(field, truth[i], wrote, line, col)}


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
# learning curves of rl.py runs: mean and 95% interval over seeds

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond 30, 1.96 is close enough)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
# what varies between seeds of one experiment, or does not change what is learned
NOT_A_SETTING = {"seed", "name", "out", "device", "eval_every", "eval_size"}


def mean_ci(values):
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)


def read_run(run_dir):
    """config.json and the rows of metrics.jsonl of one rl.py run; None if it has not logged anything."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    return {"dir": run_dir, "config": config, "rows": rows} if rows else None


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
    """One row per group: final accuracy and area under the curve, mean and 95% interval over seeds."""
    table = []
    for label, settings, members in groups:
        row = {"group": label, "seeds": len(members), "episodes": members[0]["rows"][-1]["episode"]}
        for name, values in (("final", [r["rows"][-1]["acc_plus"] for r in members]),
                             ("auc", [area_under_curve(r["rows"]) for r in members]),
                             ("comfort", [r["rows"][-1]["acc_comfort"] for r in members]),
                             ("critical_p", [r["rows"][-1].get("critical_p", float("nan")) for r in members]),
                             ("kl", [r["rows"][-1].get("kl") or 0.0 for r in members])):
            row[name], row[name + "_ci"] = mean_ci(values)
        row["start"] = members[0]["rows"][0]["acc_plus"]
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
    print("| checkpoint | set | K | accuracy % | 95% CI |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['set']} | {r['K']} | {r['accuracy']:.1f} | {r['ci_low']:.1f}-{r['ci_high']:.1f} |")
    write_csv(os.path.join(args.results, "accuracy.csv"), rows)


def cmd_errors(args, device, dtype):
    model, meta = load(args.ckpt, device)
    n = pretrain_digits(meta, args.ckpt)
    k = args.digits or n + 1
    problems = data.eval_set("identical", k, args.n)
    completions = solve(model, problems, device, dtype)
    failures = [(c, a, b) for c, (a, b) in zip(completions, problems) if not data.reward(c, a, b)]
    errors = [first_error(c, a, b) for c, a, b in failures]  # never None: a perfect scratchpad ends right
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
        print(f"\nclaims {a}+{b}={data.parse_answer(c)}, truth {a + b}; first error: {first_error(c, a, b)}")


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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (label, _, members), color in zip(groups, plt.cm.viridis([i / max(1, len(groups) - 1) for i in range(len(groups))])):
        episodes = [r["episode"] for r in members[0]["rows"]]
        for ax, key in zip(axes, ("acc_plus", "critical_p")):
            columns = [[run["rows"][i][key] for run in members if len(run["rows"]) > i] for i in range(len(episodes))]
            stats = [mean_ci(c) for c in columns]
            mean = [m for m, _ in stats]
            ax.plot(episodes, mean, color=color, label=f"{label} ({len(members)} seeds)")
            ax.fill_between(episodes, [m - h for m, h in stats], [m + h for m, h in stats], color=color, alpha=0.2)
    axes[0].set(xlabel="episodes", ylabel="held-out N+k greedy accuracy (%)", title=title)
    axes[1].set(xlabel="episodes", ylabel="p(correct critical token), lines 1-3", title="critical tokens")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)


def cmd_curves(args):
    runs = find_runs(args.runs)
    if not runs:
        sys.exit(f"error: no rl.py runs (folders with metrics.jsonl) in {' '.join(args.runs)}; run rl.py first")
    groups = group_runs(runs)
    table = summarize(groups)
    lines = ["| runs | seeds | episodes | N+k accuracy: start | final (95% CI) | area under curve (95% CI) | "
             "comfort zone final | critical p final | KL/token final |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['group']} | {r['seeds']} | {r['episodes']} | {r['start']:.1f} | {r['final']:.1f} +- "
                     f"{r['final_ci']:.1f} | {r['auc']:.1f} +- {r['auc_ci']:.1f} | {r['comfort']:.1f} | "
                     f"{r['critical_p']:.3f} | {r['kl']:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    write_text(os.path.join(args.results, args.name + ".md"),
               f"`python analyze.py curves {' '.join(args.runs)} --name {args.name}`\n\n" + text)
    plot_curves(groups, os.path.join(args.results, args.name + ".png"), args.name)


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
    cur = sub.add_parser("curves", help="learning curves of rl.py runs, mean and 95%% interval over seeds")
    cur.add_argument("runs", nargs="+", help="run folders, or folders holding them (runs/sweep)")
    cur.add_argument("--name", default="curves", help="results/<name>.md and results/<name>.png")
    cur.add_argument("--results", default="results", help="folder for the table and the figure")
    for s in (acc, err):
        s.add_argument("--n", type=int, default=1000, help="problems per set (default 1000)")
        s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
        s.add_argument("--results", default="results", help="folder for CSV files")
    args = p.parse_args(argv)
    if getattr(args, "n", 1) < 1:
        p.error("--n must be at least 1")
    if getattr(args, "extra", 0) < 0:
        p.error("--extra must be at least 0")
    if getattr(args, "digits", None) is not None and args.digits < 1:
        p.error("--digits must be at least 1")
    return args


def main(argv=None):
    args = get_args(argv)
    if args.command == "curves":  # reads run logs only: no model, no device
        return cmd_curves(args)
    device = pick_device(args.device)
    dtype = autocast_dtype("auto", device)
    torch.manual_seed(0)
    {"accuracy": cmd_accuracy, "errors": cmd_errors}[args.command](args, device, dtype)


if __name__ == "__main__":
    main()
