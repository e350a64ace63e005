"""
Learning curves of rl.py runs: runs that differ only in the seed are grouped, and every figure is a mean
with a 95% t-interval over seeds. Run through analyze.py:

    python analyze.py curves runs/sweep       # final accuracy, area under the curve, comfort zone, damage
    python analyze.py frontier runs/sweep     # final accuracy against KL to the reference

Each writes <out>/<name>.md, whose first line is the exact command that rewrote it, and <name>.png.

A reader of the method may skip it: it only reads finished runs' logs and compares them over seeds.
"""
import json
import math
import os
import statistics
import sys

from lab.files import pyplot, save_figure, write_text
from lab.metrics import detectable, mean_ci
from lab.run_logs import find_runs, label_checkpoints, made_on, run_finished, train_rows

# -----------------------------------------------------------------------------
# learning curves of rl.py runs: mean and 95% interval over seeds

# what varies between seeds of one experiment, or does not change what is learned (eval_every and
# eval_size change what was measured, so they do split groups). The machine, threads and code a run ran on,
# and the training precision --dtype auto chose there, are listed under each table instead: like the
# machine, they change only rounding; generation precision moves greedy near-ties, so it splits groups.
NOT_A_SETTING = {"seed", "name", "out", "device", "save", "threads", "sampler", "fast_generate", "draft",
                 "force", "resume", "provenance", "dtype", "training_dtype", "deterministic", "ckpt_sha256"}

# the penalty each group paid and where its weighting put it: (key for seed_value, header, digits)
KL_COLUMNS = (("exact_kl_train", "exact KL/token, training mean", 5),
              ("exact_kl", "exact KL/token, final", 5), ("kl_weight_train", "mean kl_weight, training", 4),
              ("weight_decisive", "kl_weight at pi_ref's first errors, before RL", 4),
              ("weight_elsewhere", "kl_weight elsewhere, before RL", 4))


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


def run_settings(run, defaults):
    """What makes a run's group: its settings but the seed and NOT_A_SETTING (a flag added after the run
    was made: its default), the checkpoint by file name, whichever folder a run named (or, where runs of
    one file name started from different files, by name and SHA-256: `label_checkpoints`)."""
    settings = {k: v for k, v in {**defaults, **run["config"]}.items() if k not in NOT_A_SETTING}
    if settings.get("ckpt"):
        settings["ckpt"] = run.get("ckpt_label") or os.path.basename(settings["ckpt"])
    return settings


def drop_twins(runs, defaults):
    """Each seed once per group: a later run of the same settings and seed (a rerun, another folder) would
    count one seed twice and shrink the interval for nothing. Returns (runs kept, [what was left out]).
    defaults: rl.py's flags at their defaults (analyze.py passes them), for flags added after a run."""
    kept, seen, twins = [], {}, []
    for run in runs:
        key = (json.dumps(run_settings(run, defaults), sort_keys=True), json.dumps(run["config"].get("seed")))
        if key in seen:
            twins.append(f"{run['dir']} (seed {run['config'].get('seed')} again: {seen[key]} counts it)")
        else:
            seen[key] = run["dir"]
            kept.append(run)
    return kept, twins


def group_runs(runs, defaults):
    """Runs that share every setting except the seed form one group. Returns [(label, settings, runs)],
    the label naming only the settings that differ between groups (defaults: as in drop_twins)."""
    groups = {}
    for run in runs:
        settings = run_settings(run, defaults)
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
                             ("auc_mean", [seed_value(r, "auc_mean") for r in done]),
                             ("comfort", [seed_value(r, "comfort") for r in done]),
                             ("critical_p", [seed_value(r, "critical_p") for r in done]),
                             ("critical_p_all", [seed_value(r, "critical_p_all") for r in done]),
                             ("kl", [r["rows"][-1].get("kl") or 0.0 for r in done]),
                             ("kl_uncertain", [seed_value(r, "kl_uncertain") for r in done]),
                             ("kl_certain", [seed_value(r, "kl_certain") for r in done])):
            row[name], row[name + "_ci"] = mean_ci(values)
        for key, _, _ in KL_COLUMNS:  # over the seeds that logged it (a group may mix older runs in)
            values = [v for v in (seed_value(r, key) for r in done) if not math.isnan(v)]
            row[key], row[key + "_ci"] = mean_ci(values) if values else (float("nan"), float("nan"))
            row[key + "_seeds"] = len(values)
        row["start"] = done[0]["rows"][0]["acc_plus"]
        row["damaged"] = sum(damaged(r) for r in done)
        row["sampled"], row["sampled_ci"] = mean_ci([r["rows"][-1].get("acc_plus_sampled",
                                                                       float("nan")) for r in done])
        table.append(row)
    return table


def plot_curves(groups, path, title):
    """Fig. 4: held-out N+k accuracy and critical-token probability against episodes, mean and 95% band."""
    plt = pyplot()
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
            ax.fill_between(episodes, [min(max(m - h, 0), top) for m, h in stats],  # nan stays nan
                            [min(max(m + h, 0), top) for m, h in stats], color=color, alpha=0.2)
    axes[0].set(xlabel="episodes", ylabel="held-out N+k greedy accuracy (%)", title=title)
    for ax, where in zip(axes[1:], ("lines 1-3 (paper)", "every line")):
        ax.set(xlabel="episodes", ylabel="p(correct ',' at the n+1 comma)", title=f"critical tokens, {where}")
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
    plt = pyplot()
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


def exact_kl(row):
    """One iteration's exact KL(pi || pi_ref) per generated state, from the split train.jsonl logs
    (metrics.kl_split): the unsure states' share times their mean KL, plus the rest's."""
    share = row["share_uncertain"]
    return share * (row["kl_uncertain"] or 0.0) + (1 - share) * (row["kl_certain"] or 0.0)


def training_means(run):
    """Means over a run's train.jsonl of the exact KL and kl_weight: over training, and since the evaluation
    before the last ("final"); at the commas over training (nan if unlogged). {} before the split."""
    rows = [r for r in train_rows(run) if r.get("share_uncertain") is not None]
    if not rows:
        return {}
    last = [r for r in rows if len(run["rows"]) < 2 or r["episode"] > run["rows"][-2]["episode"]] or rows
    logged = lambda key: [r[key] for r in rows if r.get(key) is not None] or [float("nan")]
    return {"exact_kl_train": sum(map(exact_kl, rows)) / len(rows),
            "exact_kl": sum(map(exact_kl, last)) / len(last),
            "kl_weight_train": sum(r["kl_weight"] for r in rows) / len(rows),
            **{key + "_train": statistics.fmean(logged(key)) for key in ("kl_critical", "weight_critical")}}


def seed_value(run, key):
    """One run's number for a table column: "final" N+k accuracy, "auc" (area under the curve), final
    "comfort" zone accuracy, a `training_means` key, the weights of evaluation 0 ("weight_decisive",
    "weight_elsewhere"), or the last value of any other key it logged (nan if it never did)."""
    if key == "auc":
        return area_under_curve(run["rows"])
    if key == "auc_mean":  # the other area: every evaluation counts the same, the start included
        return sum(row["acc_plus"] for row in run["rows"]) / len(run["rows"])
    if key in ("exact_kl", "exact_kl_train", "kl_weight_train", "kl_critical_train", "weight_critical_train"):
        return training_means(run).get(key, float("nan"))
    if key in ("weight_decisive", "weight_elsewhere"):
        value = run["rows"][0].get(key)
        return float("nan") if value is None else value
    value = run["rows"][-1].get({"final": "acc_plus", "comfort": "acc_comfort"}.get(key, key))
    return float("nan") if value is None else value


# the columns of the paired table: (key for seed_value, header, digits)
PAIRED = (("final", "N+k final", 1), ("auc", "area under curve", 1),
          ("auc_mean", "area, mean over evaluations", 1), ("comfort", "comfort zone final", 1),
          ("critical_p", "critical p final, lines 1-3", 4),
          ("kl_uncertain", "KL/token where pi_ref unsure", 4), ("kl_certain", "KL/token where sure", 4),
          ("acc_plus_sampled", "N+k final, sampled", 1),
          ("exact_kl_train", "exact KL/token, training mean", 5))


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
    power = []
    for r in table:
        pairs = [(run, by_seed[run["config"].get("seed")]) for run in r["runs"]
                 if run["config"].get("seed") in by_seed]
        if r is base or not pairs:
            continue
        cells = [plus_minus(*mean_ci([seed_value(a, key) - seed_value(b, key) for a, b in pairs]), digits)
                 for key, _, digits in PAIRED]
        lines.append(f"| {r['group']} | {len(pairs)} | " + " | ".join(cells) + " |")
        smallest = [detectable([seed_value(a, key) - seed_value(b, key) for a, b in pairs])
                    for key in ("final", "auc", "auc_mean")]
        power.append(f"| {r['group']} | {len(pairs)} | " + " | ".join(f"{v:.1f}" for v in smallest) + " |")
    return lines + ["", "The smallest paired difference these pairs detect at 80% power (two-sided 5%), from "
                        "their own spread, (t_975 + t_80) x sd / sqrt(pairs); \"area under curve\" is the "
                        "trapezoid over episodes:", "",
                    "| runs | pairs | N+k final | area under curve | area, mean over evaluations |",
                    "|---|---|---|---|---|", *power]


def load_groups(paths, defaults):
    """The rl.py runs under `paths`, grouped by setting and summarized; exits with one line if none."""
    skipped = []
    runs = label_checkpoints(find_runs(paths, skipped))
    if not runs:
        sys.exit(f"error: no rl.py runs (folders with metrics.jsonl) in {' '.join(paths)}; run rl.py first"
                 + (f" (left out: {'; '.join(skipped)})" if skipped else ""))
    runs, twins = drop_twins(runs, defaults)
    groups = group_runs(runs, defaults)
    table = summarize(groups)
    left_out = skipped + [f"{r['dir']} (not finished)" for r in runs if not run_finished(r)] + twins
    left_out += [note for r in runs for note in r.get("notes", [])]
    if left_out:
        print(f"warning: left out {'; '.join(left_out)}", file=sys.stderr)
    return groups, table, left_out


def write_table(args, command, lines, left_out, runs):
    left_out = f"\nLeft out: {'; '.join(left_out)}\n" if left_out else ""
    text = "\n".join(lines) + "\n\n" + made_on(runs) + "\n" + left_out
    print(text, end="")
    # the first line is the command that rewrites this file from the logs (tests/test_readme.py re-runs it)
    rewrite = f"python analyze.py {command} {' '.join(args.runs)} --name {args.name} --results {args.results}"
    rewrite += f" --baseline {args.baseline}" if getattr(args, "baseline", None) else ""
    write_text(os.path.join(args.results, args.name + ".md"), f"`{rewrite}`\n\n" + text)


COMMAS = [f"critical_p_line{line}_list{k}" for line in (1, 2, 3) for k in (1, 2)]  # the six of Fig. 7


def comma_lines(table):
    """The paper's six critical commas (scratchpad line, operand list), for runs that logged them:
    p(right comma) start -> final, and the exact KL/token and mean kl_weight there over the last window of
    training (metrics.kl_split's kl_critical and weight_critical); mean and 95% interval over seeds."""
    if not any(run["rows"][-1].get("kl_critical") is not None for r in table for run in r["runs"]):
        return []
    head = " | ".join(f"line {key[15]}, list {key[-1]}" for key in COMMAS)
    lines = ["", "At the paper's critical commas (p of the right comma, start -> final; the exact KL/token "
             "and mean kl_weight there, last window of training):", "",
             f"| runs | {head} | exact KL there | kl_weight there |", "|---" * 9 + "|"]
    for r in table:
        def cell(key, at=-1, digits=3):
            values = [run["rows"][at].get(key) for run in r["runs"]]
            return plus_minus(*mean_ci([v for v in values if v is not None] or [float("nan")]), digits)
        cells = [f"{cell(key, 0).split()[0]} -> {cell(key)}" for key in COMMAS]
        lines.append(f"| {r['group']} | {' | '.join(cells)} | {cell('kl_critical', digits=4)} | "
                     f"{cell('weight_critical', digits=4)} |")
    return lines


def cmd_curves(args, defaults):
    groups, table, left_out = load_groups(args.runs, defaults)
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
    lines += ["", "The KL to the reference, exact (over the vocabulary, at the sampling temperature, on the "
              "training batches: train.jsonl), and the weighting, over the seeds that logged them "
              "(n/a: none did):", "",
              "| runs | seeds with the KL split | " + " | ".join(h for _, h, _ in KL_COLUMNS) + " |",
              "|---" * (len(KL_COLUMNS) + 2) + "|"]
    for r in table:
        cells = [plus_minus(r[key], r[key + "_ci"], digits) for key, _, digits in KL_COLUMNS]
        split = f"{r['exact_kl_seeds']} of {r['seeds']}"
        lines.append(f"| {r['group']} | {split} | " + " | ".join(cells) + " |")
    lines += comma_lines(table)
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
    write_table(args, "curves", lines, left_out, [run for _, _, members in groups for run in members])
    plot_curves(groups, os.path.join(args.results, args.name + ".png"), args.name)
    plot_alpha(groups, table, os.path.join(args.results, args.name + "_vs_alpha.png"))
