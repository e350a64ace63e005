"""
Final accuracy against the KL to the reference: does a prioritized penalty (alpha > 0) reach accuracy that
no uniform one reaches at the same KL? Run through analyze.py:

    python analyze.py frontier runs/sweep     # <out>/<name>.md, <name>.png (k2 KL), <name>_exact.png

A uniform penalty (alpha 0, or kl_coef 0) is one point of the trade-off; the best uniform group at no more
KL than x is "the uniform frontier". The KL is read two ways: the k2 estimate on the sampled tokens that
the loss used (every run has it), and the exact per-state KL over the vocabulary (runs that logged the KL
split: curves.training_means).
"""
import math
import os

import rl
from curves import load_groups, plus_minus, seed_value, write_table
from files import pyplot, save_figure


def is_uniform(settings):
    """No penalty, or one whose weighting (rl.kl_weight) gives every certainty the same weight (alpha 0)."""
    run = rl.args_with(**settings)
    weights = {float(rl.kl_weight(j, run)) for j in (0.0, 0.25, 0.5, 0.75, 1.0)}
    return settings.get("kl_coef", 0) == 0 or len(weights) == 1


def beaten_by(row, table, kl="kl"):
    """The uniform groups whose mean final accuracy is at least row's with no more mean KL to the reference
    (empty: row lies above the uniform frontier). kl: "kl" (k2 estimate) or "exact_kl"; groups without it
    (nan) are never compared."""
    return [u for u in table if is_uniform(u["settings"]) and u is not row
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
            rows = [r for r in table if is_uniform(r["settings"]) == uniform]
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
        uniform = sorted((r[kl], r[key]) for r in table if is_uniform(r["settings"]))
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


def cmd_frontier(args):
    groups, table, left_out = load_groups(args.runs)
    lines = ["In short (the README's table):", "",
             "| runs | penalty | seeds | KL/token final (95% CI) | N+k final (95% CI) | "
             "above the uniform frontier |",
             "|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: r["kl"]):
        uniform = is_uniform(r["settings"])
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
        uniform = is_uniform(r["settings"])
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
        uniform = is_uniform(r["settings"])
        lines.append(f"| {r['group']} | {'uniform' if uniform else 'prioritized'} | "
                     f"{r['exact_kl_seeds']} of {r['seeds']} | "
                     f"{plus_minus(r['exact_kl'], r['exact_kl_ci'], 5)} | "
                     f"{plus_minus(r['kl'], r['kl_ci'], 4)} | {plus_minus(r['final'], r['final_ci'])} | "
                     f"{'' if uniform else verdict(r, exact, 'exact_kl')} |")
    write_table(args, "frontier", lines, left_out, [run for _, _, members in groups for run in members])
    plot_frontier(table, os.path.join(args.results, args.name + ".png"), args.name)
    if exact:
        plot_frontier(exact, os.path.join(args.results, args.name + "_exact.png"), args.name, "exact_kl")
