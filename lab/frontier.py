"""
Final accuracy against the KL to the reference: does a prioritized penalty (alpha > 0) reach accuracy that
no uniform one reaches at the same KL? Run through analyze.py:

    python analyze.py frontier runs/sweep     # <out>/<name>.md, <name>.png (k2 KL), <name>_exact.png

A uniform penalty (alpha 0, or kl_coef 0) is one point of the trade-off; the best comparable uniform group
(same checkpoint, lr and settings) at no more KL than x is "the uniform frontier". The KL is read as the
loss's k2 estimate, and as the exact per-state KL over the vocabulary (curves.training_means).

A reader of the method may skip it: it only reads finished runs' logs, like lab/curves.py.
"""
import math
import os
import statistics
import sys

from lab.curves import load_groups, plus_minus, seed_value, write_table
from lab.run_logs import train_rows
from lab.metrics import detectable, mean_ci
from lab.files import pyplot, save_figure


def mark_uniform(table, is_uniform):
    """Each group of the table says whether its penalty is uniform (is_uniform(settings), from analyze.py)."""
    for row in table:
        row["uniform"] = is_uniform(row["settings"])
    return table


# settings a uniform penalty may differ in from a prioritized one it is compared with: the penalty's own
# (alpha, kl_coef, and the certainty that only a prioritized weight reads)
PENALTY = {"alpha", "kl_coef", "certainty", "certainty_temperature"}


def comparable(u, row):
    """Whether group u can stand in row's frontier: the same checkpoint (by name and hash), learning rate and
    every other setting but the penalty's (a frontier from another model or lr would compare nothing)."""
    same = lambda settings: {k: v for k, v in settings.items() if k not in PENALTY}
    return same(u["settings"]) == same(row["settings"])


def uniform_of(row, table):
    """The uniform groups of the table that row can be compared with (`comparable`)."""
    return [u for u in table if u["uniform"] and u is not row and comparable(u, row)]


def beaten_by(row, table, kl="kl"):
    """The comparable uniform groups whose mean final accuracy is at least row's with no more mean KL to the
    reference (empty: row lies above the uniform frontier, if it has one: uniform_of). kl: "kl" (k2
    estimate) or "exact_kl"; groups without it (nan) are never compared."""
    return [u for u in uniform_of(row, table) if u[kl] <= row[kl] and u["final"] >= row["final"]]


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
    label_of = {id(r): label for r, label in zip(table, point_labels(table))}
    for ax, key, ylabel in zip(axes, ("final", "auc", "comfort"), ("final N+k greedy accuracy (%)",
                               "area under the N+k curve (%)", "final comfort-zone accuracy (%)")):
        for uniform, color in ((True, "tab:blue"), (False, "tab:orange")):
            rows = [r for r in table if r["uniform"] == uniform]
            for r in rows:
                ax.scatter([run_kl(x, kl) for x in r["runs"]],
                           [seed_value(x, key) for x in r["runs"]], s=10, color=color, alpha=0.35)
                ax.errorbar(r[kl], r[key], xerr=r[kl + "_ci"], yerr=r[key + "_ci"], color=color, marker="o",
                            capsize=3)
                ax.annotate(label_of[id(r)], (r[kl], r[key]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
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
    context = shared_settings(table)
    fig.suptitle(f"Accuracy against the KL paid to pi_ref{' (' + context + ')' if context else ''}, "
                 f"runs: {title}", fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def verdict(row, table, kl):
    """A prioritized group's place against the uniform frontier: the uniform groups that beat it, or none;
    "no comparable uniform run" where the table holds no frontier for it."""
    if not uniform_of(row, table):
        return "no comparable uniform run: not compared"
    return "; ".join(f"{u['group']} ({u['final']:.1f} at {u[kl]:.4f})" for u in beaten_by(row, table, kl)) \
        or "none: above the frontier"


def cmd_frontier(args, defaults, is_uniform):
    """defaults: rl.py's flags at their defaults; is_uniform(settings): whether a group's penalty weighs
    every state alike (analyze.py passes both: they are the method's, not this module's)."""
    groups, table, left_out = load_groups(args.runs, defaults)
    mark_uniform(table, is_uniform)
    if alone := [r["group"] for r in table if not r["uniform"] and not uniform_of(r, table)]:
        print(f"warning: no uniform run shares the checkpoint, lr and other settings of {'; '.join(alone)}: "
              "not compared with any frontier", file=sys.stderr)
    lines = ["In short (the README's table):", "",
             "| runs | penalty | seeds | KL/token final (95% CI) | N+k final (95% CI) | "
             "above the uniform frontier |",
             "|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: r["kl"]):
        uniform = r["uniform"]
        above = ("" if uniform else "no frontier" if not uniform_of(r, table) else
                 "no" if beaten_by(r, table) else "yes")
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
        lines += [""] + area_points_lines(exact) + [""] + regime_lines(exact) + [""]
        lines += against_frontier_lines(exact) + matched_coefficient_lines(exact)
    write_table(args, "frontier", lines, left_out, [run for _, _, members in groups for run in members])
    plot_frontier(table, os.path.join(args.results, args.name + ".png"), args.name)
    if exact:
        plot_frontier(exact, os.path.join(args.results, args.name + "_exact.png"), args.name, "exact_kl")
        plot_against_frontier(exact, os.path.join(args.results, args.name + "_area.png"), args.name)


# -----------------------------------------------------------------------------
# each prioritized run against the uniform frontier of its own seed, at its own exact KL

# what a prioritized group is compared on: (key for seed_value, header, digits)
FRONTIER_KEYS = (("auc_mean", "test area (mean over evaluations)", 1), ("comfort", "comfort zone final", 1),
                 ("critical_p", "p(right comma) final", 3))


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


def regime_lines(table):
    """Each group's optimisation regime (gradient_norms, mean training reward, exact KL and kl_weight at the
    commas, final p(right comma), comfort lost): a penalty clipped most of the time is another regime."""
    lines = ["Which regime each group ran in (over all training iterations of all its seeds; kl_weight and "
             "KL at the commas: training means; p(right comma): final, lines 1-3; mean and 95% interval over "
             "seeds):", "",
             "| runs | seeds | gradient norm, median (clipped iterations) | training reward | "
             "exact KL at the commas | kl_weight, overall / at the commas | p(right comma) final | "
             "comfort lost (5+ points) |", "|---" * 8 + "|"]
    for r in sorted(table, key=lambda r: r["exact_kl_train"]):
        rewards = [mean_ci([row["reward"] for row in train_rows(run) if row.get("reward") is not None]
                           or [float("nan")])[0] for run in r["runs"]]
        cell = lambda key, digits: plus_minus(*mean_ci([seed_value(run, key) for run in r["runs"]]), digits)
        median, clipped = gradient_norms(r)
        norm = "n/a" if median is None else f"{median:.3f} ({clipped:.0f}%)"
        weights = [r["kl_weight_train"], mean_ci([seed_value(run, "weight_critical_train")
                                                  for run in r["runs"]])[0]]
        lines.append(f"| {r['group']} | {r['seeds']} | {norm} | {plus_minus(*mean_ci(rewards), 3)} | "
                     f"{cell('kl_critical_train', 4)} | "
                     + " / ".join("n/a" if math.isnan(w) else f"{w:.4f}" for w in weights) + " | "
                     f"{cell('critical_p', 3)} | {sum(map(comfort_lost, r['runs']))} of {r['seeds']} |")
    return lines


def gradient_norms(r):
    """A group's gradient norm before clipping, median over every iteration of every seed, and the percent
    of those iterations that were clipped (norm above the run's --grad-clip); (None, None) if unlogged."""
    norms, clipped = [], 0
    for run in r["runs"]:
        cap = run["config"].get("grad_clip", 1.0) or float("inf")
        logged = [row["grad_norm"] for row in train_rows(run) if row.get("grad_norm") is not None]
        norms += logged
        clipped += sum(1 for norm in logged if norm > cap)
    return (statistics.median(norms), 100 * clipped / len(norms)) if norms else (None, None)


def matched_coefficient_lines(table):
    """Each prioritized group minus the uniform group of the same kl_coef and every other setting (alpha 0:
    the standard penalty at that coefficient), seed by seed: the only difference is the weight J^alpha.
    Mean, 95% interval and detectable difference of test area and comfort final; nothing if no group has
    such a partner."""
    lines = ["", "Matched coefficient: each prioritized group minus alpha 0 at the same kl_coef and every "
             "other setting, paired by seed (mean, 95% interval; detectable at 80% power):", "",
             "| runs | pairs | " + " | ".join(f"{header}: minus alpha 0 | detectable"
                                             for _, header, _ in FRONTIER_KEYS) + " |",
             "|---" * (2 + 2 * len(FRONTIER_KEYS)) + "|"]
    found = False
    for r in (r for r in table if not r["uniform"]):
        twin = {**r["settings"], "alpha": 0.0}
        partner = [u for u in table if u["uniform"] and u["settings"] == twin]
        if not partner:
            continue
        by_seed = {run["config"].get("seed"): run for run in partner[0]["runs"]}
        pairs = [(run, by_seed[run["config"].get("seed")]) for run in r["runs"]
                 if run["config"].get("seed") in by_seed]
        cells = []
        for key, _, digits in FRONTIER_KEYS:
            diffs = [seed_value(a, key) - seed_value(b, key) for a, b in pairs]
            cells += [plus_minus(*mean_ci(diffs), digits),
                      f"{detectable(diffs):.{digits}f}" if len(diffs) > 1 else "n/a"]
        lines.append(f"| {r['group']} | {len(pairs)} | " + " | ".join(cells) + " |")
        found = True
    return lines if found else []


def comfort_lost(run):
    """The damage of the add5 plans: the comfort zone ends 5 points or more below its start (a missing value
    counts as lost)."""
    first, last = run["rows"][0].get("acc_comfort"), run["rows"][-1].get("acc_comfort")
    return first is None or last is None or first - last >= 5


def against_frontier_lines(table):
    """For each prioritized group: per seed, its test area and comfort final minus the uniform frontier
    interpolated at its own exact KL (the comparable uniform penalties, kl_coef > 0, of its seed), the mean,
    95% interval and detectable difference; its mean kl_weight overall and at the commas; then each seed's
    bracket, or how far outside the uniform range it lies; and every group's seeds that lost the comfort
    zone."""
    lines = ["Against the uniform frontier at the same exact KL (per seed: linear in log exact KL between the"
             " two uniform penalties of that seed that bracket the run's exact KL, training mean; mean, 95% "
             "interval, and the difference detectable at 80% power from the seeds' spread):", "",
             "| runs | exact KL | mean kl_weight over training (overall / at the commas) | seeds inside | " +
             " | ".join(f"{header}: minus frontier | detectable" for _, header, _ in FRONTIER_KEYS) + " |",
             "|---" * (4 + 2 * len(FRONTIER_KEYS)) + "|"]
    per_seed = ["", "Per seed (a seed outside the uniform runs' range of exact KL is not interpolated):", "",
                "| runs | seed | exact KL | uniform bracket | " +
                " | ".join(f"{header}: minus frontier" for _, header, _ in FRONTIER_KEYS) + " |",
                "|---" * (4 + len(FRONTIER_KEYS)) + "|"]
    short = ["In short (the README's table: each prioritized group against the uniform frontier at its own "
             "exact KL, paired by seed, as below; clipped: the share of training iterations whose gradient "
             "was clipped):", "",
             "| runs | exact KL, training mean | mean kl_weight over training (overall / at the commas) | "
             "test area minus frontier (seeds inside) | comfort final minus frontier | clipped |",
             "|---" * 6 + "|"]
    for r in (r for r in table if not r["uniform"]):
        uniform = [run for u in uniform_of(r, table) if u["settings"].get("kl_coef", 0) > 0
                   for run in u["runs"]]
        diffs = {key: [] for key, _, _ in FRONTIER_KEYS}
        for run in r["runs"]:  # in seed order already: curves.group_runs sorts each group by seed
            mine = [u for u in uniform if u["config"].get("seed") == run["config"].get("seed")]
            x = seed_value(run, "exact_kl_train")
            cells = []
            for key, _, digits in FRONTIER_KEYS:
                y, where = frontier_at(mine, x, key)
                if y is not None:
                    diffs[key].append(seed_value(run, key) - y)
                cells.append("n/a" if y is None else f"{seed_value(run, key) - y:+.{digits}f}")
            per_seed.append(f"| {r['group']} | {run['config'].get('seed')} | {x:.5f} | {where} | "
                            + " | ".join(cells) + " |")
        cells = []
        for key, _, digits in FRONTIER_KEYS:
            cells += [plus_minus(*mean_ci(diffs[key]), digits) if diffs[key] else "n/a",
                      f"{detectable(diffs[key]):.{digits}f}" if len(diffs[key]) > 1 else "n/a"]
        weights = [mean_ci([seed_value(run, k) for run in r["runs"]])[0] for k in ("kl_weight_train",
                                                                                   "weight_critical_train")]
        weights = " / ".join("n/a" if math.isnan(w) else f"{w:.4f}" for w in weights)
        inside = f"{len(diffs[FRONTIER_KEYS[0][0]])} of {r['seeds']}"
        lines.append(f"| {r['group']} | {plus_minus(r['exact_kl_train'], r['exact_kl_train_ci'], 5)} | "
                     f"{weights} | {inside} | " + " | ".join(cells) + " |")
        clipped = gradient_norms(r)[1]
        short.append(f"| {r['group']} | {plus_minus(r['exact_kl_train'], r['exact_kl_train_ci'], 5)} | "
                     f"{weights} | {cells[0]} ({inside}) | {cells[2]} | "
                     f"{'n/a' if clipped is None else f'{clipped:.0f}%'} |")
    lost = "; ".join(f"{r['group']} {sum(map(comfort_lost, r['runs']))} of {r['seeds']}" for r in table)
    lost = ["", f"Seeds whose comfort zone ended 5 points or more below its start: {lost}."]
    return short + [""] + lines + per_seed + lost


def point_labels(table):
    """A short label per group: "no penalty", "kl_coef 0.1" (uniform) or "alpha 1000, kl_coef 10"
    (prioritized), and any other setting the groups differ in (certainty=maxprob, say)."""
    others = set().union(*(r["settings"] for r in table)) - {"alpha", "kl_coef"}
    differ = sorted(k for k in others if len({str(r["settings"].get(k)) for r in table}) > 1)
    labels = []
    for r in table:
        coef, alpha = r["settings"].get("kl_coef", 0), r["settings"].get("alpha", 0)
        penalty = ("no penalty" if coef == 0 else f"kl_coef {coef:g}" if r["uniform"]
                   else f"alpha {alpha:g}, kl_coef {coef:g}")
        labels.append(", ".join([penalty] + [f"{k}={r['settings'].get(k)}" for k in differ]))
    return labels


def shared_settings(table):
    """What every group of the table shares, for a figure's title: "add5.pt, lr 0.0003" (empty if nothing)."""
    shared = []
    for key, name in (("ckpt", ""), ("lr", "lr ")):
        values = {str(r["settings"].get(key)) for r in table}
        if len(values) == 1 and None not in (r["settings"].get(key) for r in table):
            shared.append(f"{name}{values.pop()}")
    return ", ".join(shared)


def plot_against_frontier(table, path, title):
    """Test area (mean over evaluations) and comfort-zone final against the exact KL (training mean), one
    point per group with 95% bars on both axes: the uniform penalties (kl_coef > 0) joined in order of KL
    (their frontier), the prioritized ones of each alpha joined likewise (theirs). Each group has its own
    marker and a line of the legend, outside the axes: no label can cover another."""
    plt = pyplot()
    table = [r for r in table if not math.isnan(r["exact_kl_train"]) and r["exact_kl_train"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    labels = point_labels(table)
    markers = "osD^v<>ph*"
    uniform_shades = plt.cm.Blues([0.45 + 0.5 * i / max(1, len(table)) for i in range(len(table))])
    other_shades = plt.cm.Oranges([0.45 + 0.5 * i / max(1, len(table)) for i in range(len(table))])
    ylabels = ("N+k test accuracy, mean over the evaluations (%)", "comfort zone accuracy at the end (%)")
    for ax, key, ylabel in zip(axes, ("auc_mean", "comfort"), ylabels):
        for i, (r, label) in enumerate(zip(table, labels)):
            x, y = r["exact_kl_train"], r[key]
            color = (uniform_shades if r["uniform"] else other_shades)[i]
            x_ci = [[min(r["exact_kl_train_ci"], 0.9 * x)], [r["exact_kl_train_ci"]]]  # a log axis stays > 0
            y_ci = 0.0 if math.isnan(r[key + "_ci"]) else r[key + "_ci"]
            ax.errorbar(x, y, xerr=x_ci, yerr=y_ci, color=color, marker=markers[i % len(markers)],
                        capsize=3, linestyle="none", label=f"{label} ({r['seeds']} seeds)")
        for name, color, pick in frontier_lines(table):
            line = sorted((r["exact_kl_train"], r[key]) for r in table if pick(r) and not math.isnan(r[key]))
            ax.plot([x for x, _ in line], [y for _, y in line], color=color, linewidth=1, alpha=0.7,
                    label=name if key == "comfort" else None)  # the legend is on the right axes
        ax.set(xscale="log", xlabel="exact KL/token to pi_ref, mean over training (log scale)", ylabel=ylabel)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    context = shared_settings(table)
    fig.suptitle(f"What each penalty learns for the KL it pays{' (' + context + ')' if context else ''}, "
                 f"runs: {title}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def frontier_lines(table):
    """The lines of the area figure: (legend, color, which groups): the uniform penalties with kl_coef > 0,
    then the prioritized ones of each alpha (two or more groups)."""
    lines = [("uniform penalties, joined", "tab:blue",
              lambda r: r["uniform"] and r["settings"].get("kl_coef", 0) > 0)]
    alphas = sorted({r["settings"].get("alpha") for r in table if not r["uniform"]})
    for alpha in alphas:
        if sum(1 for r in table if not r["uniform"] and r["settings"].get("alpha") == alpha) > 1:
            lines.append((f"prioritized, alpha {alpha:g}, joined", "tab:orange",
                          lambda r, a=alpha: not r["uniform"] and r["settings"].get("alpha") == a))
    return lines
