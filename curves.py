"""
Learning curves of rl.py runs: runs that differ only in the seed are grouped, and every figure is a mean
with a 95% t-interval over seeds. Run through analyze.py:

    python analyze.py curves runs/sweep       # final accuracy, area under the curve, comfort zone, damage
    python analyze.py frontier runs/sweep     # final accuracy against KL to the reference

Each writes <out>/<name>.md, whose first line is the exact command that rewrote it, and <name>.png.
"""
import json
import math
import os
import sys

import rl
from run_folder import find_runs, run_finished
from runtime import save_figure, write_text

# -----------------------------------------------------------------------------
# learning curves of rl.py runs: mean and 95% interval over seeds

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond 30, 1.96 is close enough)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
# what varies between seeds of one experiment, or does not change what is learned (eval_every and
# eval_size change what was measured, so they do split groups). The machine, threads and code a run ran on,
# and the training precision --dtype auto chose there, are listed under each table instead: like the
# machine, they change only rounding; generation precision moves greedy near-ties, so it splits groups.
NOT_A_SETTING = {"seed", "name", "out", "device", "save", "threads", "fast_generate", "draft", "force",
                 "resume", "provenance", "dtype", "training_dtype", "deterministic"}


def mean_ci(values):
    """Mean and the half-width of its 95% t-interval (nan for a single value: no interval)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)


def damaged(run):
    """The damage test for one run (README, glossary: "damaged"): the comfort zone lost 5 points or more,
    or the N+k accuracy ended below its start, or a logged value is not finite."""
    first, last = run["rows"][0], run["rows"][-1]
    values = [v for r in run["rows"] for v in r.values() if isinstance(v, float)]
    return (first["acc_comfort"] - last["acc_comfort"] >= 5 or last["acc_plus"] < first["acc_plus"]
            or any(r.get(k) is None for r in run["rows"] for k in ("acc_plus", "acc_comfort"))
            or not all(math.isfinite(v) for v in values))


def plus_minus(mean, half, digits=1):
    """'mean +- half', 'mean (1 seed)' where there is no interval, 'n/a' where nothing was measured."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} " + ("(1 seed)" if math.isnan(half) else f"+- {half:.{digits}f}")


def area_under_curve(rows, key="acc_plus"):
    """Mean of `key` over training (trapezoids over episodes), in the curve's units (100 = always perfect)."""
    xs, ys = [r["episode"] for r in rows], [r[key] for r in rows]
    if len(xs) < 2 or xs[-1] == xs[0]:
        return ys[-1]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])) / (xs[-1] - xs[0])


def group_runs(runs):
    """Runs that share every setting except the seed form one group. Returns [(label, settings, runs)],
    the label naming only the settings that differ between groups."""
    groups, defaults = {}, vars(rl.settings())  # a flag added after a run was made: its default
    for run in runs:
        settings = {k: v for k, v in {**defaults, **run["config"]}.items() if k not in NOT_A_SETTING}
        if settings.get("ckpt"):  # a checkpoint is its file name, whichever folder a run named
            settings["ckpt"] = os.path.basename(settings["ckpt"])
        groups.setdefault(json.dumps(settings, sort_keys=True), (settings, []))[1].append(run)
    all_settings = [s for s, _ in groups.values()]
    keys = sorted({k for s in all_settings for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in all_settings}) > 1]
    out = []
    for settings, members in groups.values():
        label = ", ".join(f"{k}={settings.get(k)}" for k in varying) or "all runs"
        if settings.get("kl_coef") == 0 and "alpha" in varying:
            label += " (no penalty: alpha unused)"
        out.append((label, settings, sorted(members, key=lambda r: r["config"].get("seed", 0))))
    numbers_first = lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, json.dumps(v))
    return sorted(out, key=lambda g: [numbers_first(g[1].get(k)) for k in varying])


def summarize(groups):
    """One row per group: final accuracy and area under the curve, mean and 95% interval over the seeds
    that finished (`unfinished` counts the others, left out); groups with no finished run are dropped."""
    table = []
    for label, settings, members in groups:
        done = [r for r in members if run_finished(r)]
        if not done:
            continue
        row = {"group": label, "settings": settings, "seeds": len(done),
               "unfinished": len(members) - len(done),
               "episodes": done[0]["rows"][-1]["episode"], "runs": done}
        for name, values in (("final", [seed_value(r, "final") for r in done]),
                             ("val", [seed_value(r, "val_plus") for r in done]),
                             ("auc", [seed_value(r, "auc") for r in done]),
                             ("comfort", [seed_value(r, "comfort") for r in done]),
                             ("critical_p", [seed_value(r, "critical_p") for r in done]),
                             ("critical_p_all", [seed_value(r, "critical_p_all") for r in done]),
                             ("kl", [r["rows"][-1].get("kl") or 0.0 for r in done]),
                             ("kl_uncertain", [seed_value(r, "kl_uncertain") for r in done]),
                             ("kl_certain", [seed_value(r, "kl_certain") for r in done])):
            row[name], row[name + "_ci"] = mean_ci(values)
        row["start"] = done[0]["rows"][0]["acc_plus"]
        row["damaged"] = sum(damaged(r) for r in done)
        row["sampled"], row["sampled_ci"] = mean_ci([r["rows"][-1].get("acc_plus_sampled",
                                                                       float("nan")) for r in done])
        table.append(row)
    return table


def clipped(value, top):
    """value cut to [0, top], the range the quantity can take; nan (no data) stays nan."""
    return value if math.isnan(value) else min(max(value, 0), top)


def plot_curves(groups, path, title):
    """Fig. 4: held-out N+k accuracy and critical-token probability against episodes, mean and 95% band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = plt.cm.viridis([i / max(1, len(groups) - 1) for i in range(len(groups))])
    for (label, _, members), color in zip(groups, colors):
        # rows are matched by episode, not by position: a run cut off early adds to the episodes it reached
        episodes = sorted({r["episode"] for run in members for r in run["rows"]})
        by_episode = [{r["episode"]: r for r in run["rows"]} for run in members]
        for ax, key, top in zip(axes, ("acc_plus", "critical_p", "critical_p_all"), (100, 1, 1)):
            columns = [[rows[e].get(key, float("nan")) for rows in by_episode if e in rows] for e in episodes]
            stats = [mean_ci(c) for c in columns]
            mean = [m for m, _ in stats]
            ax.plot(episodes, mean, color=color, label=f"{label} ({len(members)} seeds)")
            # the band is the t-interval of the mean, cut to the range the quantity can take
            ax.fill_between(episodes, [clipped(m - h, top) for m, h in stats], [clipped(m + h, top) for m,
                                                                                h in stats],
                            color=color, alpha=0.2)
    axes[0].set(xlabel="episodes", ylabel="held-out N+k greedy accuracy (%)", title=title)
    axes[1].set(xlabel="episodes", ylabel="p(correct ',' at the n+1 comma)",
                title="critical tokens, lines 1-3 (paper)")
    axes[2].set(xlabel="episodes", ylabel="p(correct ',' at the n+1 comma)",
                title="critical tokens, every line")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_alpha(groups, table, path):
    """Fig. 6: final N+k accuracy and area under the curve against alpha (mean and 95% interval over
    seeds, cut to 0-100%, and a point per seed), one line per combination of the other settings. False if
    fewer than 3 alphas were run."""
    series = {}
    for (label, settings, _), row in zip(groups, table):
        rest = ", ".join(part for part in label.split(", ") if not part.startswith("alpha=")) or "all runs"
        series.setdefault(rest, []).append((settings.get("alpha", 0.0), row))
    if max(len(points) for points in series.values()) < 3:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rest, points in series.items():
        points.sort(key=lambda p: p[0])
        for ax, key in zip(axes, ("final", "auc")):
            means, bars = [], ([], [])
            for _, r in points:
                mean, half = r[key], r[key + "_ci"]
                half = 0.0 if math.isnan(half) else half  # a single seed has no interval
                means.append(mean)
                bars[0].append(mean - max(0.0, mean - half))  # cut to the 0-100% an accuracy can take
                bars[1].append(min(100.0, mean + half) - mean)
            seeds = ", ".join(str(r["seeds"]) for _, r in points)
            line = ax.errorbar([a for a, _ in points], means, yerr=bars, marker="o", capsize=3,
                               label=f"{rest} (seeds: {seeds})")
            seed_alphas = [a for a, r in points for _ in r["runs"]]
            seed_values = [seed_value(run, key) for _, r in points for run in r["runs"]]
            ax.scatter(seed_alphas, seed_values, s=12, alpha=0.5, color=line[0].get_color())  # one per seed
    for ax, what in zip(axes, ("final", "area under the curve of")):
        ax.set_xscale("symlog", linthresh=1)  # alpha = 0 (the standard penalty) stays on the axis
        ax.axhline(points[0][1]["start"], color="grey", linestyle=":", label="before RL")
        ax.set(xlabel="alpha (0 = standard KL)", ylabel=f"{what} N+k greedy accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def seed_value(run, key):
    """One run's number for a table column: "final" N+k accuracy, "auc" (area under the curve), final
    "comfort" zone accuracy, or the last value of any other key it logged (nan if it never did)."""
    if key == "auc":
        return area_under_curve(run["rows"])
    value = run["rows"][-1].get({"final": "acc_plus", "comfort": "acc_comfort"}.get(key, key))
    return float("nan") if value is None else value


# the columns of the paired table: (key for seed_value, header, digits)
PAIRED = (("final", "N+k final", 1), ("auc", "area under curve", 1), ("comfort", "comfort zone final", 1),
          ("critical_p", "critical p final, lines 1-3", 4),
          ("kl_uncertain", "KL/token where pi_ref unsure", 4), ("kl_certain", "KL/token where sure", 4))


def matches(settings, baseline):
    """Whether a group's settings match --baseline's KEY=VALUE,... (numbers compared as numbers)."""
    for pair in baseline.split(","):
        key, _, value = pair.partition("=")
        have = settings.get(key.strip())
        try:
            same = float(have) == float(value)
        except (TypeError, ValueError):
            same = str(have) == value.strip()
        if not same:
            return False
    return True


def paired_lines(table, baseline):
    """Every group minus the --baseline group, seed by seed: arms that share a seed share the problem
    stream, so the per-seed difference is the sharper comparison. Mean and 95% interval of the differences."""
    base = [r for r in table if matches(r["settings"], baseline)]
    if len(base) != 1:
        sys.exit(f"error: --baseline {baseline} matches {len(base)} groups, not one; "
                 "name the settings that single it out (KEY=VALUE,KEY=VALUE)")
    base = base[0]
    by_seed = {run["config"].get("seed"): run for run in base["runs"]}
    lines = [f"Paired per-seed differences: each group minus {base['group']}, on the seeds both ran "
             "(mean and 95% interval of the differences):", "",
             "| runs | pairs | " + " | ".join(header for _, header, _ in PAIRED) + " |",
             "|---" * (len(PAIRED) + 2) + "|"]
    for r in table:
        pairs = [(run, by_seed[run["config"].get("seed")]) for run in r["runs"]
                 if run["config"].get("seed") in by_seed]
        if r is base or not pairs:
            continue
        cells = [plus_minus(*mean_ci([seed_value(a, key) - seed_value(b, key) for a, b in pairs]), digits)
                 for key, _, digits in PAIRED]
        lines.append(f"| {r['group']} | {len(pairs)} | " + " | ".join(cells) + " |")
    return lines


def load_groups(paths):
    """The rl.py runs under `paths`, grouped by setting and summarized; exits with one line if none."""
    runs = find_runs(paths)
    if not runs:
        sys.exit(f"error: no rl.py runs (folders with metrics.jsonl) in {' '.join(paths)}; run rl.py first")
    groups = group_runs(runs)
    table = summarize(groups)
    unfinished = [r["dir"] for r in runs if not run_finished(r)]
    if unfinished:
        print(f"left out, not finished: {', '.join(unfinished)}", file=sys.stderr)
    return groups, table, unfinished


def made_on(runs):
    """One line: what the runs ran on (machine, threads, torch, commit, training precision), how many each."""
    counts = {}
    for run in runs:
        p, training = run["config"].get("provenance"), run["config"].get("training_dtype")
        where = (f"{p['machine']}, {p['threads']} thread(s), torch {p['torch']}, code {p['commit']}, "
                 f"training in {training}" if p else
                 "not recorded in the runs (made before rl.py recorded it: results/README.md)")
        counts[where] = counts.get(where, 0) + 1
    return "Made on: " + "; ".join(f"{where}: {n} run(s)" for where, n in sorted(counts.items())) + "."


def write_table(args, command, lines, unfinished, runs):
    left_out = f"\nLeft out, not finished: {', '.join(unfinished)}\n" if unfinished else ""
    text = "\n".join(lines) + "\n\n" + made_on(runs) + "\n" + left_out
    print(text, end="")
    # the first line is the command that rewrites this file from the logs (tests/test_readme.py re-runs it)
    rewrite = f"python analyze.py {command} {' '.join(args.runs)} --name {args.name} --results {args.results}"
    rewrite += f" --baseline {args.baseline}" if getattr(args, "baseline", None) else ""
    write_text(os.path.join(args.results, args.name + ".md"), f"`{rewrite}`\n\n" + text)


def cmd_curves(args):
    groups, table, unfinished = load_groups(args.runs)
    lines = ["In short (the README's table):", "",
             "| runs | seeds | N+k start | N+k final (95% CI) | area under curve (95% CI) | damaged seeds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['seeds']} | {r['start']:.1f} | {plus_minus(r['final'], r['final_ci'])} | "
              f"{plus_minus(r['auc'], r['auc_ci'])} | {r['damaged']}/{r['seeds']} |" for r in table]
    lines += ["", "In full:", "",
              "| runs | seeds | episodes | N+k accuracy: start | final (95% CI) | validation final | "
              "area under curve (95% CI) | sampled final | comfort zone final (95% CI) | damaged seeds | "
              "critical p final, lines 1-3 / every line (95% CI) | KL/token final | "
              "KL/token final where pi_ref unsure / sure |", "|---" * 13 + "|"]
    for r in table:
        lines.append(f"| {r['group']} | {r['seeds']} | {r['episodes']} | {r['start']:.1f} | "
                     f"{plus_minus(r['final'], r['final_ci'])} | {plus_minus(r['val'], r['val_ci'])} | "
                     f"{plus_minus(r['auc'], r['auc_ci'])} | {plus_minus(r['sampled'], r['sampled_ci'])} | "
                     f"{plus_minus(r['comfort'], r['comfort_ci'])} | {r['damaged']}/{r['seeds']} | "
                     f"{plus_minus(r['critical_p'], r['critical_p_ci'], 4)} / "
                     f"{plus_minus(r['critical_p_all'], r['critical_p_all_ci'], 4)} | {r['kl']:.4f} | "
                     f"{plus_minus(r['kl_uncertain'], r['kl_uncertain_ci'], 4)} / "
                     f"{plus_minus(r['kl_certain'], r['kl_certain_ci'], 4)} |")
    if getattr(args, "baseline", None):
        lines += [""] + paired_lines(table, args.baseline)
    lines += ["", "At each evaluation (mean and 95% interval over the finished seeds):", "",
              "| runs | episode | N+k greedy | comfort zone | critical p, lines 1-3 | "
              "critical p, every line |",
              "|---|---|---|---|---|---|"]
    for r in table:
        by_episode = {}
        for run in r["runs"]:
            for row in run["rows"]:
                by_episode.setdefault(row["episode"], []).append(row)
        for episode, rows in sorted(by_episode.items()):
            cell = lambda key, digits: plus_minus(*mean_ci([x.get(key, float("nan")) for x in rows]), digits)
            lines.append(f"| {r['group']} | {episode} | {cell('acc_plus', 1)} | {cell('acc_comfort', 1)} | "
                         f"{cell('critical_p', 4)} | {cell('critical_p_all', 4)} |")
    write_table(args, "curves", lines, unfinished, [run for _, _, members in groups for run in members])
    plot_curves(groups, os.path.join(args.results, args.name + ".png"), args.name)
    plot_alpha(groups, table, os.path.join(args.results, args.name + "_vs_alpha.png"))


def is_uniform(settings):
    """No penalty, or one whose weighting (rl.kl_weight) gives every certainty the same weight (alpha 0)."""
    run = rl.settings(**settings)
    weights = {float(rl.kl_weight(j, run)) for j in (0.0, 0.25, 0.5, 0.75, 1.0)}
    return settings.get("kl_coef", 0) == 0 or len(weights) == 1


def beaten_by(row, table):
    """The uniform groups whose mean final accuracy is at least row's with no more mean KL to the reference
    (empty: row lies above the uniform frontier)."""
    return [u for u in table if is_uniform(u["settings"]) and u is not row
            and u["kl"] <= row["kl"] and u["final"] >= row["final"]]


def plot_frontier(table, path, title):
    """Final and area-under-curve N+k accuracy, and final comfort-zone accuracy, against the final KL to
    the reference: one small dot per run, the group's mean with 95% intervals on both axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, ylabel in zip(axes, ("final", "auc", "comfort"), ("final N+k greedy accuracy (%)",
                               "area under the N+k curve (%)", "final comfort-zone accuracy (%)")):
        for uniform, color in ((True, "tab:blue"), (False, "tab:orange")):
            rows = [r for r in table if is_uniform(r["settings"]) == uniform]
            for r in rows:
                ax.scatter([x["rows"][-1].get("kl") or 0.0 for x in r["runs"]],
                           [seed_value(x, key) for x in r["runs"]], s=10, color=color, alpha=0.35)
                ax.errorbar(r["kl"], r[key], xerr=r["kl_ci"], yerr=r[key + "_ci"], color=color, marker="o",
                            capsize=3)
                setting = ("kl", "kl_coef") if uniform else ("a", "alpha")
                short = f"{setting[0]} {r['settings'].get(setting[1], 0):g}"
                ax.annotate(short, (r["kl"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.plot([], [], color=color, marker="o", label="uniform: alpha 0 or kl_coef 0" if uniform else
                    "prioritized: alpha > 0 (at its kl_coef)")
        # the uniform frontier: the best uniform group mean at no more KL than x
        uniform = sorted((r["kl"], r[key]) for r in table if is_uniform(r["settings"]))
        steps = [(x, max(y for x2, y in uniform if x2 <= x)) for x, _ in uniform]
        if steps and key != "comfort":
            right = max(r["kl"] for r in table) * 1.1
            ax.step([x for x, _ in steps] + [right], [y for _, y in steps] + [steps[-1][1]], where="post",
                    color="tab:blue", linestyle="--", linewidth=1, label="uniform frontier (group means)")
        ax.set(xlabel="KL/token to the reference at the end (k2 estimate, training batches)", ylabel=ylabel)
        ax.set_xlim(left=0)
    axes[0].set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def cmd_frontier(args):
    groups, table, unfinished = load_groups(args.runs)
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
        verdict = "" if uniform else ("; ".join(f"{u['group']} ({u['final']:.1f} at {u['kl']:.4f})"
                                                for u in beaten_by(r, table)) or "none: above the frontier")
        lines.append(f"| {r['group']} | {'uniform' if uniform else 'prioritized'} | {r['seeds']} | "
                     f"{plus_minus(r['kl'], r['kl_ci'], 4)} | {plus_minus(r['final'], r['final_ci'])} | "
                     f"{plus_minus(r['val'], r['val_ci'])} | {plus_minus(r['auc'], r['auc_ci'])} | "
                     f"{plus_minus(r['comfort'], r['comfort_ci'])} | {verdict} |")
    write_table(args, "frontier", lines, unfinished, [run for _, _, members in groups for run in members])
    plot_frontier(table, os.path.join(args.results, args.name + ".png"), args.name)
