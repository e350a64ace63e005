"""
How analyze.py writes what it measured: the accuracy cache, CSV, the probe's markdown tables and the
figures (Fig. 2, Fig. 5). A reader of the method may skip it: nothing here measures anything.
"""
import csv
import io
import json
import os
import sys
from collections import Counter

import torch

from lab.files import pyplot, save_figure, write_text


def read_cache(path):
    """Cells measured before, by key; a line cut off by a kill, or otherwise not a cell (a field missing or
    not a number), is skipped (it is measured again)."""
    cells = {}
    if path and os.path.isdir(path):
        sys.exit(f"error: --cache {path} is a folder; give a file path such as "
                 f"{os.path.join(path, 'cache.jsonl')}")
    if path and os.path.exists(path) and not os.path.isfile(path):  # a FIFO would wait for a writer forever
        sys.exit(f"error: --cache {path} is not a regular file (a FIFO or a device); pass another --cache "
                 "or '' for none")
    if path and os.path.exists(path):
        try:
            with open(path, errors="replace") as f:
                lines = f.readlines()
        except OSError as e:
            sys.exit(f"error: cannot read --cache {path} ({e.strerror}); pass another --cache or '' for none")
        for line in lines:
            try:
                cell = json.loads(line)
                key = str(cell.pop("key"))
            except (ValueError, KeyError, AttributeError, TypeError):
                continue
            numbers = [cell.get(k) for k in ("accuracy", "ci_low", "ci_high", "n", "K")]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
            if numeric and isinstance(cell.get("set"), str):
                cells[key] = cell  # a cell with a field missing or of the wrong type is measured again
    return cells


def append_to_cache(path, key, cell):
    """One line per measured cell, written at once (a kill loses at most the cell under way)."""
    if path:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps({"key": key, **cell}) + "\n")
        except OSError as e:
            sys.exit(f"error: cannot write --cache {path} ({e.strerror}); pass another --cache, or '' for "
                     "none")


def plot_accuracy(rows, path):
    """Fig. 2: greedy accuracy against the number of digits K, one line per checkpoint, Wilson intervals."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("identical", "varying")):
        for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
            mine = [r for r in rows if r["checkpoint"] == ckpt and r["set"] == kind]
            if not mine:  # every K too long for its positions
                continue
            below = [r["accuracy"] - r["ci_low"] for r in mine]
            above = [r["ci_high"] - r["accuracy"] for r in mine]
            ax.errorbar([r["K"] for r in mine], [r["accuracy"] for r in mine], yerr=[below, above],
                        marker="o", capsize=3, label=f"{os.path.basename(ckpt)} (N = {mine[0]['N']})")
        ax.set(xlabel="K (digits of the operands)", title=f"{kind} problems")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("greedy exact-match accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_csv(path, rows):
    if not rows:
        return
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


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


def accuracy_lines(rows, checkpoints, extra):
    """The accuracy cells as markdown: one row per cell, then Table 4 and Table 5 (K = N..N+extra)."""
    lines = ["| checkpoint | set | K | accuracy % | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['set']} | {r['K']} | {r['accuracy']:.1f} | "
              f"{r['ci_low']:.1f}-{r['ci_high']:.1f} |"
              for r in rows]
    columns = ["K = N"] + [f"K = N+{k}" for k in range(1, extra + 1)]
    for kind, title in (("identical", "Table 4 (identical: K+K digits)"),
                        ("varying", "Table 5 (varying: K + M digits, M uniform in 1..K)")):
        lines += ["", title, "", "| checkpoint | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for path in checkpoints:
            cells = {r["K"] - r["N"]: f"{r['accuracy']:.1f} ({r['ci_low']:.1f}-{r['ci_high']:.1f})"
                     for r in rows if r["checkpoint"] == path and r["set"] == kind}
            lines.append(f"| {path} | " + " | ".join(cells.get(k, "too long") for k in range(extra + 1))
                         + " |")
    return lines


def errors_lines(first_errors, top):
    """Where failed generations first go wrong, as markdown: by place and mistake, then by kind of mistake."""
    lines = ["", "| line | field | digits before | expected | wrote | kind | count |", "|---" * 7 + "|"]
    where = Counter((e["line"], e["field"], e["index"], e["expected"], e["wrote"], e["kind"])
                    for e in first_errors)
    for (line, field, index, expected, wrote, kind), count in where.most_common(top):
        lines.append(f"| {line} | {field} | {'' if index is None else index} | {expected!r} | {wrote!r} | "
                     f"{kind} | {count} |")
    lines += ["", "| kind | count |", "|---|---|"]
    kinds = Counter(e["kind"] for e in first_errors)
    return lines + [f"| {kind} | {count} |" for kind, count in kinds.most_common(top)]


def show_certainty(text, J, problem, path, results, right):
    """Fig. 5: the text coloured by J, on a terminal (ANSI colours) and as certainty_<checkpoint>.png."""
    (a, b), low_j = problem, min(J)
    if sys.stdout.isatty():  # colours only for a terminal, not for a file or a pipe
        print(f"\n{path}: {a}+{b}, coloured by certainty J (red = {low_j:.2f}, white = 1), "
              f"{'right' if right else 'wrong'} answer\n{ansi_certainty(text, J, low_j)}")
    stem = os.path.splitext(os.path.basename(path))[0]
    plot_certainty(text, J, low_j, os.path.join(results, f"certainty_{stem}.png"),
                   f"{stem}: {a}+{b}, each character coloured by the certainty J of the model writing it")
