"""
An addition-only analysis (it reads the scratchpad's lines and fields).

Where a generation first goes wrong: which line and field of the scratchpad a character sits in, what kind
of mistake a wrong one is (a list closed too early, a skipped digit, ...), and the command that counts them
over many failures (probe.py's critical-token probe describes tokens with these too):

    python analyze.py errors --ckpt checkpoints/add7.pt     # the first wrong character of each failure
"""
import sys
from collections import Counter

import data
import metrics
from model import load_or_exit, pretrain_digits


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
    i = data.first_error((a, b), completion)
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


def addition_only(command):
    """Refuse, in one line, to read another task's texts as the addition scratchpad."""
    if data.NAME != "addition":
        sys.exit(f"error: analyze.py {command} reads the lines and fields of the addition scratchpad, and "
                 f"this code's task (data.NAME) is {data.NAME!r}: it has no meaning here")


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
    print(f"{args.ckpt}: {k}+{k} greedy accuracy {100 * (1 - len(failures) / len(problems)):.1f}% "
          f"({len(failures)} of {len(problems)} failed)")
    if failures:
        def share(count):
            return f"{count} of {len(failures)} failures ({100 * count / len(failures):.1f}%)"
        print(f"- first error in an operand list on lines 1-3: {share(len(in_lists))}")
        print(f"- first error at the paper's critical comma on lines 1-3: {share(at_critical[3])}")
        print("- first error at the critical comma of any line (a list longer than pre-training ever showed "
              f"on that line, closed where pre-training closed it): {share(at_critical[None])}")
        print("\n| line | field | digits before | expected | wrote | kind | count |\n" + "|---" * 7 + "|")
        where = Counter((e["line"], e["field"], e["index"], e["expected"], e["wrote"], e["kind"])
                        for e in first_errors)
        for (line, field, index, expected, wrote, kind), count in where.most_common(args.top):
            print(f"| {line} | {field} | {'' if index is None else index} | {expected!r} | {wrote!r} | "
                  f"{kind} | {count} |")
        print("\n| kind | count |\n|---|---|")
        for kind, count in Counter(e["kind"] for e in first_errors).most_common(args.top):
            print(f"| {kind} | {count} |")
    for c, a, b in failures[:args.show]:
        print(f"\nclaims {a}+{b}={data.parse_answer(c)}, truth {a + b}; first error: "
              f"{describe_error(c, a, b)}")
