"""
Where a character sits in the addition scratchpad (its line, its field, the digits before it) and what kind
of mistake a wrong one is: the words of analyze.py's errors and probe tables. A reader of the method may skip
how a line is taken apart.
"""
import sys

import data


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
