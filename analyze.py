"""
Look inside the models: accuracy tables and where generations go wrong.

    python analyze.py accuracy --ckpt checkpoints/add7.pt [--n 1000]
        greedy exact-match accuracy on held-out 'identical' (K+K) and 'varying' (K+M, M <= K)
        problems, K = N..N+3, with 95% confidence intervals (paper Tables 4 and 5)
    python analyze.py errors --ckpt checkpoints/add7.pt [--digits 8] [--n 1000]
        for each failed K+K generation, the first character that differs from the correct scratchpad:
        which line, which field (operand list, A, carry, sum) and what was written instead
"""
import argparse
import csv
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


def write_csv(path, rows):
    if not rows:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
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
    for s in (acc, err):
        s.add_argument("--n", type=int, default=1000, help="problems per set (default 1000)")
        s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
        s.add_argument("--results", default="results", help="folder for CSV files")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    if getattr(args, "extra", 0) < 0:
        p.error("--extra must be at least 0")
    if getattr(args, "digits", None) is not None and args.digits < 1:
        p.error("--digits must be at least 1")
    return args


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    dtype = autocast_dtype("auto", device)
    torch.manual_seed(0)
    {"accuracy": cmd_accuracy, "errors": cmd_errors}[args.command](args, device, dtype)


if __name__ == "__main__":
    main()
