"""
Look inside the models, and make every table and figure of the paper: one command, six subcommands.

    python analyze.py accuracy --ckpt checkpoints/add7.pt [--n 1000]
        greedy exact-match accuracy on held-out 'identical' (K+K) and 'varying' (K+M, M <= K)
        problems, K = N..N+3, 95% intervals (paper Tables 4 and 5; Fig. 2: accuracy.png)   (here)
    python analyze.py errors --ckpt checkpoints/add7.pt [--digits 8] [--n 1000]
        for each failed K+K generation, the first character that differs from the correct scratchpad:
        which line, which field (operand list, A, carry, sum) and what was written instead  (errors.py)
    python analyze.py probe [--ckpt checkpoints/add3.pt checkpoints/add5.pt checkpoints/add7.pt] [--n 50]
        the critical tokens: Table 1 (Delta J at places chosen with and without J), decisiveness,
        Fig. 5 (a generation coloured by J), the weight J^alpha per alpha                    (probe.py)
    python analyze.py curves runs/sweep [--name curves]
        learning curves of rl.py runs grouped over seeds: final N+k accuracy, area under the curve,
        comfort zone, damage, mean and 95% t-interval (Fig. 4; Fig. 6 with three or more alphas)  (curves.py)
    python analyze.py frontier runs/sweep [--name frontier]
        final accuracy against KL to the reference: uniform against prioritized penalties  (frontier.py)
    python analyze.py study [--budget small|full] [--jobs 2]
        all of the above, rl.py runs included: Fig. 4, Fig. 6, Fig. 3 in results/study_<budget>/;
        --jobs N runs N rl.py runs at once, each with 1/N of the CPU threads                (here)
"""
import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

import data
from curves import cmd_curves
from errors import cmd_errors
from frontier import cmd_frontier
from metrics import solve, wilson_interval
from model import load_or_exit, pretrain_digits
from probe import cmd_probe
from run_folder import read_run
from files import hold_lock, pyplot, release_locks, save_figure, write_text
from runtime import DEVICE_HELP, generation_dtype, number, pick_device, run_script, set_threads


# -----------------------------------------------------------------------------
# accuracy tables (paper Tables 4 and 5)

def accuracy_cell(model, kind, k, n, device, dtype, draft=True):
    """Greedy exact-match accuracy on n held-out problems of one set and size: a row of Tables 4-5."""
    problems = data.eval_set(kind, k, n)
    completions = solve(model, problems, device, dtype, draft=draft)
    wins = sum(data.reward(problem, c) for c, problem in zip(completions, problems))
    low, high = wilson_interval(wins, len(problems))
    return {"set": kind, "K": k, "n": len(problems), "accuracy": round(100 * wins / len(problems), 1),
            "ci_low": round(low, 1), "ci_high": round(high, 1)}


def read_cache(path):
    """Cells measured before, by key; a line cut off by a kill, or otherwise not a cell, is skipped (it is
    measured again)."""
    cells = {}
    if path and os.path.isdir(path):
        sys.exit(f"error: --cache {path} is a folder; give a file path such as "
                 f"{os.path.join(path, 'cache.jsonl')}")
    if path and os.path.exists(path):
        try:
            with open(path, errors="replace") as f:
                lines = f.readlines()
        except OSError as e:
            sys.exit(f"error: cannot read --cache {path} ({e.strerror}); pass another --cache or '' for none")
        for line in lines:
            try:
                cell = json.loads(line)
                cells[str(cell.pop("key"))] = cell
            except (ValueError, KeyError, AttributeError, TypeError):
                continue
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


def cmd_accuracy(args, device, dtype):
    # each cell is appended to --cache as soon as it is measured: a cut-off run, rerun, starts where it
    # stopped (the key holds the checkpoint's hash, so a retrained file is measured again)
    rows, cache = [], read_cache(args.cache)
    for path in args.ckpt:
        model, meta = load_or_exit(path, device)
        n = pretrain_digits(meta, path)
        digest = hashlib.sha1(open(path, "rb").read()).hexdigest()[:16]
        for kind in ("identical", "varying"):
            for k in range(n, n + args.extra + 1):
                if data.longest_sequence(k) > model.config.block_size:
                    continue
                key = f"{digest} {kind} {k} {args.n} {str(device).split(':')[0]} {dtype}"
                cell = cache.get(key)
                if cell is None:
                    cell = accuracy_cell(model, kind, k, args.n, device, dtype, args.draft)
                    append_to_cache(args.cache, key, cell)
                rows.append({"checkpoint": path, "N": n, **cell})
                print(f"{path} {kind} K={k}: {cell['accuracy']:.1f}%{' (cached)' if key in cache else ''}",
                      file=sys.stderr)
    lines = ["| checkpoint | set | K | accuracy % | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['set']} | {r['K']} | {r['accuracy']:.1f} | "
              f"{r['ci_low']:.1f}-{r['ci_high']:.1f} |"
              for r in rows]
    columns = ["K = N"] + [f"K = N+{k}" for k in range(1, args.extra + 1)]
    for kind, title in (("identical", "Table 4 (identical: K+K digits)"),
                        ("varying", "Table 5 (varying: K + M digits, M uniform in 1..K)")):
        lines += ["", title, "", "| checkpoint | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for path in args.ckpt:
            cells = {r["K"] - r["N"]: f"{r['accuracy']:.1f} ({r['ci_low']:.1f}-{r['ci_high']:.1f})"
                     for r in rows if r["checkpoint"] == path and r["set"] == kind}
            lines.append(f"| {path} | " + " | ".join(cells.get(k, "too long") for k in range(args.extra + 1))
                         + " |")
    print("\n".join(lines))
    write_csv(os.path.join(args.results, "accuracy.csv"), rows)
    write_text(os.path.join(args.results, "accuracy.md"),
               f"`python analyze.py accuracy --ckpt {' '.join(args.ckpt)} --extra {args.extra} --n {args.n}` "
               f"(greedy exact match, Wilson 95% intervals)\n\n" + "\n".join(lines) + "\n")
    plot_accuracy(rows, os.path.join(args.results, "accuracy.png"))


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


# -----------------------------------------------------------------------------
# the whole study in one command

# what each budget runs; the small one takes about an hour on a 2-core CPU (README: "Step 3")
BUDGETS = {
    "small": {"n": 200, "probe_n": 50, "episodes": 1024, "eval_every": 256, "seeds": 3,
              "alphas": [0, 3, 10, 100, 1000, 10000], "alpha_seeds": 1, "pretraining_seeds": 1,
              "pretraining_plus": 1},
    "full": {"n": 1000, "probe_n": 50, "episodes": 2048, "eval_every": 512, "seeds": 5,
             "alphas": [0, 3, 10, 30, 100, 300, 1000, 10000], "alpha_seeds": 3, "pretraining_seeds": 3,
             "pretraining_plus": 1},
}
# Fig. 3 trains on N+1, not on the paper's N+2: none of our checkpoints solves one N+2 problem (0 of 100
# each for add3, add5, add7), so a 1/0 reward never differs within a group and RL has nothing to learn from
BEST_ALPHA = 100  # the prioritized setting of Fig. 4 (results/rl_sweep.md)
CHECKPOINTS = [f"checkpoints/add{n}.pt" for n in (3, 5, 7)]


def finished(run_dir, episodes):
    """Whether the rl.py run in run_dir has logged an evaluation at `episodes` or later."""
    rows = (read_run(run_dir) or {}).get("rows", [])
    return bool(rows) and rows[-1]["episode"] >= episodes


def run_rl(runs, budget, jobs):
    """Start the rl.py runs (out, name, flags) that have not finished yet, `jobs` at a time, each with its
    share of the CPU threads (on a GPU they share the GPU). Logs only, no model files. With jobs > 1 a
    run's output is kept and its summary line printed when it ends."""
    todo = []
    for out, name, flags in runs:
        if finished(os.path.join(out, name), budget["episodes"]):
            print(f"have {out}/{name}", file=sys.stderr)
        else:
            todo.append((out, name, flags))
    threads = max(1, torch.get_num_threads() // jobs)

    def launch(run):
        command = rl_command(*run, budget, threads)
        sys.stderr.write("$ " + " ".join(command[1:]) + "\n")  # one write: runs start side by side
        if jobs == 1:  # the run's own progress bar
            return run, subprocess.run(command).returncode, ""
        done = subprocess.run(command, capture_output=True, text=True)
        summary = [line for line in done.stdout.splitlines() if line.startswith("done:")]
        sys.stderr.write(f"{out}/{name}: " + (summary[-1] if summary else "failed") + "\n")
        return run, done.returncode, done.stderr

    failed = []
    with ThreadPoolExecutor(jobs) as pool:
        for (out, name, _), code, stderr in pool.map(launch, todo):
            if code != 0:
                failed.append(f"{out}/{name}")
                print(stderr[-2000:], file=sys.stderr)
    if failed:
        sys.exit(f"error: {len(failed)} rl.py run(s) failed: {', '.join(failed)} (commands printed above)")


def rl_command(out, name, flags, budget, threads):
    """The rl.py command of one study run; a run cut off continues from its last evaluation, one that never
    got there starts again."""
    return [sys.executable, "rl.py", "--episodes", str(budget["episodes"]), "--eval-every",
            str(budget["eval_every"]), "--out", out, "--name", name, "--no-save", "--threads", str(threads),
            "--resume" if os.path.exists(os.path.join(out, name, "state.pt")) else "--force",
            *budget.get("rl_flags", []), *flags]


def cmd_study(args):
    """Every table and figure: accuracy (Tables 4-5), the probe (Table 1, Fig. 5), standard against
    prioritized KL (Fig. 4), the alpha sweep (Fig. 6) and RL on N+2 after more pre-training (Fig. 3)."""
    budget = BUDGETS[args.budget]
    out = os.path.join(args.runs, f"study_{args.budget}")
    results = os.path.join(args.results, f"study_{args.budget}")
    missing = [c for c in CHECKPOINTS if not os.path.exists(c)]
    if missing:
        sys.exit(f"error: missing {', '.join(missing)}: the study needs the shipped checkpoints (see "
                 "checkpoints/README.md)")
    common = ["--device", args.device]
    figures = study_runs(budget, out, common)
    if args.print_commands:  # one command a line, one thread each: for `parallel -j N` or a job array
        for run in (run for runs in (figures["fig6"], figures["fig3"]) for run in runs):
            print(" ".join(["python", *rl_command(*run, budget, 1)[1:]]))
        return
    base = [sys.executable, "analyze.py"]
    for step in (["accuracy", "--ckpt", *CHECKPOINTS, "--n", str(budget["n"])],
                 ["probe", "--ckpt", *CHECKPOINTS, "--n", str(budget["probe_n"])]):
        print("$ analyze.py " + " ".join(step), file=sys.stderr)
        if subprocess.run([*base, *step, *common, "--results", results],
                          stdout=subprocess.DEVNULL).returncode:
            sys.exit(f"error: analyze.py {step[0]} failed")
    run_rl([run for runs in (figures["fig6"], figures["fig3"]) for run in runs], budget, args.jobs)
    for name, runs in figures.items():
        cmd_curves(argparse.Namespace(runs=[os.path.join(o, n) for o, n, _ in runs], name=name,
                                      results=results))


def study_runs(budget, out, common):
    """The study's rl.py runs as (folder, name, flags), per figure. Fig. 6 and Fig. 4 share their runs:
    every alpha for alpha_seeds seeds, alpha 0 and BEST_ALPHA for more; Fig. 3 starts from each checkpoint."""
    sweep, fig4, fig3 = [], [], []
    for seed in range(budget["seeds"]):
        for alpha in budget["alphas"]:
            if seed < budget["alpha_seeds"] or alpha in (0, BEST_ALPHA):
                sweep.append((os.path.join(out, "alpha"), f"alpha{alpha}_seed{seed}",
                              ["--alpha", str(alpha), "--seed", str(seed), *common]))
                if alpha in (0, BEST_ALPHA):
                    fig4.append(sweep[-1])
    for seed in range(budget["pretraining_seeds"]):
        for ckpt in CHECKPOINTS:
            fig3.append((os.path.join(out, "pretraining"),
                         f"{os.path.splitext(os.path.basename(ckpt))[0]}_seed{seed}",
                         ["--ckpt", ckpt, "--digits-plus", str(budget["pretraining_plus"]), "--alpha", "0",
                          "--seed", str(seed), *common]))
    return {"fig4": fig4, "fig6": sweep, "fig3": fig3}


def write_csv(path, rows):
    if not rows:
        return
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


ANALYSIS = "runs/analysis"  # where tables and figures go unless --out says otherwise (results/: committed)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="accuracy tables (identical and varying, K = N..N+extra)")
    acc.add_argument("--ckpt", nargs="+", default=["checkpoints/add7.pt"], help="one or more checkpoints")
    acc.add_argument("--extra", type=number("--extra", int, at_least=0, at_most=20), default=3,
                     help="largest K is N + extra (default 3, at most 20)")
    acc.add_argument("--cache", default="runs/accuracy_cache.jsonl",
                     help="cells measured so far, reused by a rerun ('' to switch off)")
    err = sub.add_parser("errors", help="where failed generations first go wrong")
    err.add_argument("--ckpt", default="checkpoints/add7.pt", help="checkpoint to probe")
    err.add_argument("--digits", type=int, default=None, help="K for the K+K problems (default N+1)")
    err.add_argument("--top", type=int, default=12, help="rows per table")
    err.add_argument("--show", type=int, default=3, help="failed examples to print")
    pro = sub.add_parser("probe", help="find the critical tokens; Table 1 (Delta J) and Fig. 5")
    pro.add_argument("--ckpt", nargs="+", default=[f"checkpoints/add{n}.pt" for n in (3, 5, 7)],
                     help="checkpoints to probe (default add3, add5, add7)")
    pro.add_argument("--drop", type=float, default=0.05,
                     help="low certainty: Delta J below -drop (default 0.05)")
    pro.add_argument("--controls", type=int, default=4, help="random places tested per problem (default 4)")
    pro.add_argument("--low-tested", type=int, default=4, help="low-certainty tokens per problem tested for "
                     "decisiveness (default 4)")
    pro.add_argument("--samples", type=int, default=8,
                     help="continuations sampled after the right and after the "
                     "wrong character, for decisiveness (default 8)")
    pro.add_argument("--top", type=int, default=12, help="rows per table")
    pro.add_argument("--alpha-n", type=int, default=200,
                     help="problems for the table of weights J^alpha (default 200)")
    pro.add_argument("--certainty", default="entropy", choices=["entropy", "maxprob"],
                     help="J as in rl.py: Eq. 2 (entropy, default) or the paper's code's maxprob")
    pro.add_argument("--certainty-temperature", type=float, default=1.0,
                     help="temperature of the distribution J is taken from, as in rl.py (default 1)")
    cur = sub.add_parser("curves", help="learning curves of rl.py runs, mean and 95%% interval over seeds")
    cur.add_argument("runs", nargs="+", help="run folders, or folders holding them (runs/sweep)")
    cur.add_argument("--name", default="curves", help="<out>/<name>.md and <out>/<name>.png")
    cur.add_argument("--out", "--results", dest="results", default=ANALYSIS,
                     help=f"folder for the table and the figure (default {ANALYSIS})")
    cur.add_argument("--baseline", default=None, help="add paired per-seed differences against the group "
                     "with these settings, e.g. alpha=0,kl_coef=10 (KEY=VALUE as in config.json)")
    fro = sub.add_parser("frontier",
                         help="final accuracy against KL to the reference: uniform vs prioritized penalties")
    fro.add_argument("runs", nargs="+", help="run folders, or folders holding them")
    fro.add_argument("--name", default="frontier", help="<out>/<name>.md and <out>/<name>.png")
    fro.add_argument("--out", "--results", dest="results", default=ANALYSIS,
                     help=f"folder for the table and the figure (default {ANALYSIS})")
    stu = sub.add_parser("study",
                         help="every table and figure, runs included (small: about 1 h on 2 CPU cores)")
    stu.add_argument("--budget", default="small", choices=sorted(BUDGETS), help="small (default) or full")
    stu.add_argument("--runs", default="runs",
                     help="run logs go to <runs>/study_<budget>/ (results: the committed small study's)")
    stu.add_argument("--out", "--results", dest="results", default=ANALYSIS,
                     help="tables and figures go to <out>/study_<budget>/")
    stu.add_argument("--device", default="auto", help=DEVICE_HELP)
    stu.add_argument("--print-commands", action="store_true",
                     help="print the study's rl.py runs, one command a line with one thread each (for GNU "
                     "parallel or a cluster's job array), and run nothing")
    stu.add_argument("--jobs", type=int, default=1, help="rl.py runs at once, each with its share of the CPU "
                     "threads or of the GPU (default 1)")
    for s, size in ((acc, 1000), (err, 1000), (pro, 50)):
        s.add_argument("--n", type=number("--n", int, at_least=1, at_most=100_000), default=size,
                       help=f"problems per set (default {size}, at most 100000)")
        s.add_argument("--device", default="auto", help=DEVICE_HELP)
        s.add_argument("--out", "--results", dest="results", default=ANALYSIS,
                       help=f"folder for the tables and figures (default {ANALYSIS}; --out results rewrites "
                       "the committed ones)")
        s.add_argument("--draft", action=argparse.BooleanOptionalAction, default=True,
                       help="decode along the correct text (the same texts, faster); --no-draft: token by "
                       "token")
    for s in (acc, err, pro, stu):
        s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = p.parse_args(argv)
    name = getattr(args, "name", None)
    if name is not None and (os.path.basename(name) != name or name in ("", ".", "..")):
        p.error("--name must be a plain file name (no '/'): the outputs are <out>/<name>.md and .png")
    if getattr(args, "n", 1) < 1:
        p.error("--n must be at least 1")
    if getattr(args, "extra", 0) < 0:
        p.error("--extra must be at least 0")
    if getattr(args, "digits", None) is not None and args.digits < 1:
        p.error("--digits must be at least 1")
    threads = getattr(args, "threads", None)
    if getattr(args, "jobs", 1) < 1 or (threads is not None and threads < 1):
        p.error("--jobs and --threads must be at least 1")
    if getattr(args, "drop", 0.5) <= 0 or getattr(args, "controls", 0) < 0 or getattr(args, "alpha_n", 1) < 1:
        p.error("--drop must be positive, --controls at least 0 and --alpha-n at least 1")
    if getattr(args, "certainty_temperature", 1.0) < 0.01:
        p.error("--certainty-temperature must be positive, at least 0.01")
    if getattr(args, "samples", 1) < 1 or getattr(args, "low_tested", 0) < 0:
        p.error("--samples must be at least 1 and --low-tested at least 0")
    return args


def main(argv=None):
    args = get_args(argv)
    set_threads(getattr(args, "threads", None))
    try:
        if args.command != "study":  # the only writer of its outputs (study's runs lock their own)
            output = args.name if args.command in ("curves", "frontier") else args.command
            hold_lock(os.path.join(args.results, f".{output}.lock"), f"{args.results}/{output}.*")
        run_command(args)
    finally:
        release_locks()


def run_command(args):
    if args.command in ("curves", "frontier", "study"):  # read run logs, or start other scripts: no model
        return {"curves": cmd_curves, "frontier": cmd_frontier, "study": cmd_study}[args.command](args)
    device = pick_device(args.device)
    dtype = generation_dtype("auto", device)  # these commands generate: float32, as rl.py's evaluations
    torch.manual_seed(0)
    {"accuracy": cmd_accuracy, "errors": cmd_errors, "probe": cmd_probe}[args.command](args, device, dtype)


if __name__ == "__main__":
    run_script(main)
