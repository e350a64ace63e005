"""
Final accuracy against the KL to the reference: does a prioritized penalty (alpha > 0) reach accuracy that
no uniform one reaches at the same KL? Run through analyze.py:

    python analyze.py frontier runs/sweep     # <out>/<name>.md, <name>.png (k2 KL), <name>_exact.png

A uniform penalty (alpha 0, or kl_coef 0) is one point of the trade-off; the best uniform group at no more
KL than x is "the uniform frontier". The KL is read two ways: the k2 estimate on the sampled tokens that
the loss used (every run has it), and the exact per-state KL over the vocabulary (runs that logged the KL
split: curves.training_means).

A reader of the method may skip it: it only reads finished runs' logs, like lab/curves.py.
"""
import math
import os

from lab.curves import load_groups, plus_minus, seed_value, write_table
from lab.metrics import detectable, mean_ci
from lab.files import pyplot, save_figure


def mark_uniform(table, is_uniform):
    """Each group of the table says whether its penalty is uniform (is_uniform(settings), from analyze.py)."""
    for row in table:
        row["uniform"] = is_uniform(row["settings"])
    return table


def beaten_by(row, table, kl="kl"):
    """The uniform groups whose mean final accuracy is at least row's with no more mean KL to the reference
    (empty: row lies above the uniform frontier). kl: "kl" (k2 estimate) or "exact_kl"; groups without it
    (nan) are never compared."""
    return [u for u in table if u["uniform"] and u is not row
            and u[kl] <= row[kl] and u["final"] >= row["final"]]


KL_AXIS = {"kl": "KL/token to the reference at the end (k2 estimate, training batches)",
           "exact_kl": "exact KL/token to the reference at the end (over the vocabulary, training batches)"}


def run_kl(run, kl):
    """A run's final KL as summarize takes it: k2 ("kl", None counts as 0) or "exact_kl" (nan: none)."""
    return (run["rows"][-1].get("kl") or 0.0) if kl == "kl" else seed_value(run, kl)


def plot_frontier(table, path, title, kl="kl"):
    """Final and area-under-curve N+k accuracy, and final comfort-zone accuracy, against the final KL to
    the reference (kl: "kl" or "exact_kl"; groups without it are left out): one small dot per run, the
    group's mean with 95% intervals on both axes."""
    plt = pyplot()
    table = [r for r in table if not math.isnan(r[kl])]  # groups whose runs all predate the KL split
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, ylabel in zip(axes, ("final", "auc", "comfort"), ("final N+k greedy accuracy (%)",
                               "area under the N+k curve (%)", "final comfort-zone accuracy (%)")):
        for uniform, color in ((True, "tab:blue"), (False, "tab:orange")):
            rows = [r for r in table if r["uniform"] == uniform]
            for r in rows:
                ax.scatter([run_kl(x, kl) for x in r["runs"]],
                           [seed_value(x, key) for x in r["runs"]], s=10, color=color, alpha=0.35)
                ax.errorbar(r[kl], r[key], xerr=r[kl + "_ci"], yerr=r[key + "_ci"], color=color, marker="o",
                            capsize=3)
                setting = ("kl", "kl_coef") if uniform else ("a", "alpha")
                short = f"{setting[0]} {r['settings'].get(setting[1], 0):g}"
                ax.annotate(short, (r[kl], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.plot([], [], color=color, marker="o", label="uniform: alpha 0 or kl_coef 0" if uniform else
                    "prioritized: alpha > 0 (at its kl_coef)")
        # the uniform frontier: the best uniform group mean at no more KL than x
        uniform = sorted((r[kl], r[key]) for r in table if r["uniform"])
        steps = [(x, max(y for x2, y in uniform if x2 <= x)) for x, _ in uniform]
        if steps and key != "comfort":
            right = max(r[kl] for r in table) * 1.1
            ax.step([x for x, _ in steps] + [right], [y for _, y in steps] + [steps[-1][1]], where="post",
                    color="tab:blue", linestyle="--", linewidth=1, label="uniform frontier (group means)")
        ax.set(xlabel=KL_AXIS[kl], ylabel=ylabel)
        ax.set_xlim(left=0)
    axes[0].set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def verdict(row, table, kl):
    """A prioritized group's place against the uniform frontier: the uniform groups that beat it, or none."""
    return "; ".join(f"{u['group']} ({u['final']:.1f} at {u[kl]:.4f})" for u in beaten_by(row, table, kl)) \
        or "none: above the frontier"


def cmd_frontier(args, defaults, is_uniform):
    """defaults: rl.py's flags at their defaults; is_uniform(settings): whether a group's penalty weighs
    every state alike (analyze.py passes both: they are the method's, not this module's)."""
    groups, table, left_out = load_groups(args.runs, defaults)
    mark_uniform(table, is_uniform)
    lines = ["In short (the README's table):", "",
             "| runs | penalty | seeds | KL/token final (95% CI) | N+k final (95% CI) | "
             "above the uniform frontier |",
             "|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: r["kl"]):
        uniform = r["uniform"]
        above = "" if uniform else ("no" if beaten_by(r, table) else "yes")
        lines.append(f"| {r['group']} | {'uniform' if uniform else 'prioritized'} | {r['seeds']} | "
                     f"{plus_minus(r['kl'], r['kl_ci'], 4)} | {plus_minus(r['final'], r['final_ci'])} | "
                     f"{above} |")
    lines += ["", "In full:", "",
              "| runs | penalty | seeds | KL/token final (95% CI) | N+k final (95% CI) | validation final | "
              "area under curve (95% CI) | comfort zone final (95% CI) | "
              "uniform groups with >= accuracy at <= KL |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: r["kl"]):
        uniform = r["uniform"]
        lines.append(f"| {r['group']} | {'uniform' if uniform else 'prioritized'} | {r['seeds']} | "
                     f"{plus_minus(r['kl'], r['kl_ci'], 4)} | {plus_minus(r['final'], r['final_ci'])} | "
                     f"{plus_minus(r['val'], r['val_ci'])} | {plus_minus(r['auc'], r['auc_ci'])} | "
                     f"{plus_minus(r['comfort'], r['comfort_ci'])} | "
                     f"{'' if uniform else verdict(r, table, 'kl')} |")
    exact = sorted((r for r in table if r["exact_kl_seeds"]), key=lambda r: r["exact_kl"])
    lines += ["", "Against the exact KL (final: the mean over the iterations since the evaluation before the "
              "last), over the seeds that logged the KL split (the k2 KL and accuracy: over all seeds):", "",
              "| runs | penalty | seeds with the split | exact KL/token final (95% CI) | k2 KL/token final | "
              "N+k final (95% CI) | uniform groups with >= accuracy at <= exact KL |", "|---" * 7 + "|"]
    for r in exact:
        uniform = r["uniform"]
        lines.append(f"| {r['group']} | {'uniform' if uniform else 'prioritized'} | "
                     f"{r['exact_kl_seeds']} of {r['seeds']} | "
                     f"{plus_minus(r['exact_kl'], r['exact_kl_ci'], 5)} | "
                     f"{plus_minus(r['kl'], r['kl_ci'], 4)} | {plus_minus(r['final'], r['final_ci'])} | "
                     f"{'' if uniform else verdict(r, exact, 'exact_kl')} |")
    if exact:
        lines += [""] + area_points_lines(exact) + [""] + against_frontier_lines(exact)
    write_table(args, "frontier", lines, left_out, [run for _, _, members in groups for run in members])
    plot_frontier(table, os.path.join(args.results, args.name + ".png"), args.name)
    if exact:
        plot_frontier(exact, os.path.join(args.results, args.name + "_exact.png"), args.name, "exact_kl")
        plot_against_frontier(exact, os.path.join(args.results, args.name + "_area.png"), args.name)


# -----------------------------------------------------------------------------
# each prioritized run against the uniform frontier of its own seed, at its own exact KL

FRONTIER_KEYS = (("auc_mean", "test area (mean over evaluations)"), ("comfort", "comfort zone final"))


def frontier_at(uniform_runs, x, key):
    """The uniform penalties' `key` at exact KL x on one seed, and where it came from: linear in log KL
    between the two uniform runs whose exact KL (training mean) brackets x ("kl_coef 0.1-0.03"); outside
    their range, None and how far x lies from the nearest one
    ("outside: 0.25 below kl_coef 0.1 in log KL")."""
    points = sorted((seed_value(run, "exact_kl_train"), seed_value(run, key), run["config"].get("kl_coef"))
                    for run in uniform_runs)
    points = [p for p in points if p[0] > 0 and not math.isnan(p[0])]
    if not points:
        return None, "no uniform run of this seed"
    for (k0, y0, c0), (k1, y1, c1) in zip(points, points[1:]):
        if k0 <= x <= k1:
            share = 0.0 if k1 == k0 else (math.log(x) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return y0 + share * (y1 - y0), f"kl_coef {c0:g}-{c1:g}"
    edge, side = (points[0], "below") if x < points[0][0] else (points[-1], "above")
    return None, f"outside: {abs(math.log(x / edge[0])):.2f} {side} kl_coef {edge[2]:g} in log KL"


def area_points_lines(table):
    """The points of <name>_area.png as a table: each group's exact KL (training mean), test area (mean over
    evaluations) and comfort final, mean and 95% interval over its seeds."""
    lines = ["The area figure's points (exact KL: the mean over training; mean and 95% interval over seeds):",
             "", "| runs | penalty | seeds | exact KL/token, training mean | "
             "test area (mean over evaluations) | comfort zone final |", "|---" * 6 + "|"]
    for r in sorted(table, key=lambda r: r["exact_kl_train"]):
        cells = [plus_minus(r["exact_kl_train"], r["exact_kl_train_ci"], 5)]
        cells += [plus_minus(r[key], r[key + "_ci"]) for key in ("auc_mean", "comfort")]
        lines.append(f"| {r['group']} | {'uniform' if r['uniform'] else 'prioritized'} | {r['seeds']} | "
                     + " | ".join(cells) + " |")
    return lines


def comfort_lost(run):
    """The damage of the add5 plans: the comfort zone ends 5 points or more below its start (a missing value
    counts as lost)."""
    first, last = run["rows"][0].get("acc_comfort"), run["rows"][-1].get("acc_comfort")
    return first is None or last is None or first - last >= 5


def against_frontier_lines(table):
    """For each prioritized group: per seed, its test area and comfort final minus the uniform frontier
    interpolated at its own exact KL (the uniform penalties, kl_coef > 0, of the same seed), then the mean,
    95% interval and detectable difference; its mean kl_weight overall and at the commas; then each seed's
    bracket, or how far outside the uniform range it lies; and every group's seeds that lost the comfort
    zone."""
    uniform = [run for r in table if r["uniform"] and r["settings"].get("kl_coef", 0) > 0
               for run in r["runs"]]
    lines = ["Against the uniform frontier at the same exact KL (per seed: linear in log exact KL between the"
             " two uniform penalties of that seed that bracket the run's exact KL, training mean; mean, 95% "
             "interval, and the difference detectable at 80% power from the seeds' spread):", "",
             "| runs | exact KL | mean kl_weight (overall / at the commas) | seeds inside | " +
             " | ".join(f"{header}: minus frontier | detectable" for _, header in FRONTIER_KEYS) + " |",
             "|---" * (4 + 2 * len(FRONTIER_KEYS)) + "|"]
    per_seed = ["", "Per seed (a seed outside the uniform runs' range of exact KL is not interpolated):", "",
                "| runs | seed | exact KL | uniform bracket | " +
                " | ".join(f"{header}: minus frontier" for _, header in FRONTIER_KEYS) + " |",
                "|---" * (4 + len(FRONTIER_KEYS)) + "|"]
    for r in (r for r in table if not r["uniform"]):
        diffs = {key: [] for key, _ in FRONTIER_KEYS}
        for run in r["runs"]:  # in seed order already: curves.group_runs sorts each group by seed
            mine = [u for u in uniform if u["config"].get("seed") == run["config"].get("seed")]
            x = seed_value(run, "exact_kl_train")
            cells = []
            for key, _ in FRONTIER_KEYS:
                y, where = frontier_at(mine, x, key)
                if y is not None:
                    diffs[key].append(seed_value(run, key) - y)
                cells.append("n/a" if y is None else f"{seed_value(run, key) - y:+.1f}")
            per_seed.append(f"| {r['group']} | {run['config'].get('seed')} | {x:.5f} | {where} | "
                            + " | ".join(cells) + " |")
        cells = []
        for key, _ in FRONTIER_KEYS:
            cells += [plus_minus(*mean_ci(diffs[key])) if diffs[key] else "n/a",
                      f"{detectable(diffs[key]):.1f}" if len(diffs[key]) > 1 else "n/a"]
        weights = [mean_ci([seed_value(run, k) for run in r["runs"]])[0] for k in ("kl_weight_train",
                                                                                   "weight_critical")]
        lines.append(f"| {r['group']} | {plus_minus(r['exact_kl_train'], r['exact_kl_train_ci'], 5)} | "
                     + " / ".join("n/a" if math.isnan(w) else f"{w:.4f}" for w in weights)
                     + f" | {len(diffs[FRONTIER_KEYS[0][0]])} of {r['seeds']} | " + " | ".join(cells) + " |")
    lost = "; ".join(f"{r['group']} {sum(map(comfort_lost, r['runs']))} of {r['seeds']}" for r in table)
    lost = ["", f"Seeds whose comfort zone ended 5 points or more below its start: {lost}."]
    return lines + per_seed + lost


def point_labels(table):
    """A short label per group: "no penalty", "kl 0.1" (uniform) or "a 1000, kl 10" (prioritized), and any
    other setting the groups differ in (certainty=maxprob, say)."""
    others = set().union(*(r["settings"] for r in table)) - {"alpha", "kl_coef"}
    differ = sorted(k for k in others if len({str(r["settings"].get(k)) for r in table}) > 1)
    labels = []
    for r in table:
        coef, alpha = r["settings"].get("kl_coef", 0), r["settings"].get("alpha", 0)
        penalty = ("no penalty" if coef == 0 else f"kl {coef:g}" if r["uniform"]
                   else f"a {alpha:g}, kl {coef:g}")
        labels.append(", ".join([penalty] + [f"{k}={r['settings'].get(k)}" for k in differ]))
    return labels


def plot_against_frontier(table, path, title):
    """Test area (mean over evaluations) and comfort-zone final against the exact KL (training mean), one
    point per group with 95% bars on both axes, the uniform penalties (kl_coef > 0) joined in order of KL."""
    plt = pyplot()
    table = [r for r in table if not math.isnan(r["exact_kl_train"]) and r["exact_kl_train"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = point_labels(table)
    # prioritized points often sit close together: the leftmost one's label goes left, the others' right
    leftmost = min((r for r in table if not r["uniform"]), key=lambda r: r["exact_kl_train"],
                   default=None)
    for ax, key, ylabel in zip(axes, ("auc_mean", "comfort"), ("test area, mean over evaluations (%)",
                                                              "comfort zone final (%)")):
        for r, label in zip(table, labels):
            x, y = r["exact_kl_train"], r[key]
            color = "tab:blue" if r["uniform"] else "tab:orange"
            x_ci = [[min(r["exact_kl_train_ci"], 0.9 * x)], [r["exact_kl_train_ci"]]]  # a log axis stays > 0
            ax.errorbar(x, y, xerr=x_ci, yerr=r[key + "_ci"], color=color,
                        marker="o" if r["settings"].get("kl_coef", 0) > 0 else "s", capsize=3)
            side = -1 if r is leftmost else 1
            offset = (4, 4) if r["uniform"] else (8 * side, -3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, fontsize=7, color=color,
                        ha="left" if side > 0 else "right").set_in_layout(False)  # long labels keep the axes
        line = sorted((r["exact_kl_train"], r[key])
                      for r in table if r["uniform"] and r["settings"].get("kl_coef", 0) > 0)
        ax.plot([x for x, _ in line], [y for _, y in line], color="tab:blue", linewidth=1,
                label="uniform penalties (joined)")
        ax.scatter([], [], color="tab:orange", label="prioritized")
        ax.set(xscale="log", xlabel="exact KL/token to the reference, training mean (log)", ylabel=ylabel)
    axes[0].set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
