"""
Reading rl.py's run folders back, for the tables of lab/curves.py and lab/frontier.py: each run's config.json
(an older run's read in today's fields), its evaluations and its training log, where a damaged or empty file
is named, never dropped silently; and which reference checkpoint each run started from.

A reader of the method may skip it: it only reads finished runs' files.
"""
import json
import math
import os
import sys

from lab.run_folder import METRICS_LOG, TRAIN_LOG


# what config.json of an older run means in today's fields (results/README.md, "Older runs"): a flag that is
# gone at the one value every run now uses, and the precisions of runs that did not record them
RETIRED = {"reward": "01"}
BEFORE_DTYPES = {"training_dtype": "bfloat16", "generation_dtype": "bfloat16"}
REQUIRED = ("episode", "acc_plus", "acc_comfort")  # what every metrics.jsonl row must have


def read_run(run_dir):
    """config.json and the rows of metrics.jsonl of one rl.py run; None if it has not logged anything.
    A file that cannot be read is an error naming the file and line, not a run silently dropped."""
    config_path, metrics_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, METRICS_LOG)
    if not (os.path.exists(config_path) and os.path.exists(metrics_path)):
        return None
    for path in (config_path, metrics_path):
        if not os.path.isfile(path):  # a folder, or a FIFO that reading would wait on forever
            sys.exit(f"error: {path} is not a file (a folder, a FIFO or a device); move it away or remove "
                     "the run")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: {config_path} is not readable JSON ({e}); remove the run or repair the file")
    if not isinstance(config, dict):
        sys.exit(f"error: {config_path} is not a run's config (not a JSON object); remove the run or repair "
                 "it")
    for flag, value in RETIRED.items():  # a flag rl.py no longer has, at the value every run now uses
        if config.get(flag) == value:
            del config[flag]
    config = {**BEFORE_DTYPES, **config}
    rows = []
    with open(metrics_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                sys.exit(f"error: {metrics_path} line {number} is not JSON; remove the line or the run")
            missing = [k for k in REQUIRED if not isinstance(row, dict) or row.get(k) is None]
            if missing:
                sys.exit(f"error: {metrics_path} line {number} lacks {', '.join(missing)}; "
                         "remove the line or the run")
            if not all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) for k in REQUIRED):
                sys.exit(f"error: {metrics_path} line {number} holds a value that is not a finite number "
                         f"({', '.join(f'{k} {row[k]!r}' for k in REQUIRED)}); remove the line or the run")
            if rows and row["episode"] <= rows[-1]["episode"]:  # a duplicated or misplaced evaluation
                sys.exit(f"error: {metrics_path} line {number}: episode {row['episode']} after episode "
                         f"{rows[-1]['episode']} (rows duplicated or out of order); remove the line or the "
                         "run")
            rows.append(row)
    return {"dir": run_dir, "config": config, "rows": rows} if rows else None


def run_finished(run):
    """Whether a run logged its last evaluation (a run cut off early has no final accuracy)."""
    return run["rows"][-1]["episode"] >= run["config"].get("episodes", 0)


def find_runs(paths, skipped=None):
    """Run folders named directly, or found one level below a named folder (runs/sweep -> runs/sweep/*).
    A run folder that logged nothing yet (config.json, but no evaluation in metrics.jsonl) is no run to
    read: it is named in `skipped` (when given a list), never dropped silently."""
    runs = []
    for path in paths:
        candidates = [path] if os.path.exists(os.path.join(path, METRICS_LOG)) else \
            sorted(os.path.join(path, d) for d in (os.listdir(path) if os.path.isdir(path) else []))
        for candidate in candidates:
            run = read_run(candidate)
            if run is not None:
                runs.append(run)
            elif skipped is not None and os.path.isfile(os.path.join(candidate, "config.json")):
                skipped.append(f"{candidate} (nothing logged: {METRICS_LOG} is empty or missing)")
    return runs


def train_rows(run):
    """The rows of a run's train.jsonl (read once, kept in run["train"]). A line that is not a row (cut off
    by a kill, or damaged), holds a number that is not finite (rl.py stops before it would log one), or
    repeats or goes back on an iteration is skipped, and a log that is not a file is not read; each is named
    in run["notes"], which the tables print under "Left out"."""
    if "train" in run:
        return run["train"]
    path, rows = os.path.join(run["dir"], TRAIN_LOG), []
    run.setdefault("notes", [])
    if os.path.exists(path) and not os.path.isfile(path):
        run["notes"].append(f"{path} (not a file: its training means are n/a)")
    elif os.path.exists(path):
        with open(path, errors="replace") as f:
            for number, line in enumerate(f, 1):
                try:
                    row = json.loads(line) if line.strip() else None
                except ValueError:
                    row = False
                if row is False or (row is not None and not isinstance(row, dict)):
                    run["notes"].append(f"{path} line {number} (not a row of the log: skipped)")
                elif row is not None and (bad := ", ".join(f"{k} {v}" for k, v in row.items()
                                                          if isinstance(v, float) and not math.isfinite(v))):
                    run["notes"].append(f"{path} line {number} (not a finite number: {bad}; skipped)")
                elif row is not None and rows and row.get("iteration", 0) <= rows[-1].get("iteration", -1):
                    run["notes"].append(f"{path} line {number} (iteration {row.get('iteration')} after "
                                        f"{rows[-1].get('iteration')}: duplicated or out of order; skipped)")
                elif row is not None:
                    rows.append(row)
    run["train"] = rows
    return rows


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


def label_checkpoints(runs):
    """Two checkpoints that share a file name but not their SHA-256 (config.json's ckpt_sha256) are two
    references: their runs must not pool. Such runs get the name and the hash's first 12 digits as their
    checkpoint's label (a run from before hashes were recorded: "sha256 unknown"); others keep the name."""
    hashes = {}
    for run in runs:
        name = os.path.basename(str(run["config"].get("ckpt")))
        hashes.setdefault(name, set()).add(run["config"].get("ckpt_sha256"))
    for run in runs:
        name = os.path.basename(str(run["config"].get("ckpt")))
        if len(hashes[name] - {None}) > 1:
            digest = run["config"].get("ckpt_sha256")
            run["ckpt_label"] = f"{name} (sha256 {digest[:12] if digest else 'unknown'})"
    return runs
