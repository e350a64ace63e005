"""The README's numbers come from committed files: each results table in it is marked with the file it
was copied from (<!-- from results/X.md -->) and its rows must be rows of that file; and each table that
analyze.py made from run logs is rewritten identically, from the committed logs, by the command on its
first line."""
import glob
import os
import re
import shlex
import subprocess

import analyze

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = re.compile(r"<!-- from (\S+) -->")
COMMAND = re.compile(r"`python analyze.py ((?:curves|frontier) .*)`")


def readme_tables(text):
    """[(source file, [table rows])] for every marked table of a README's text."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines):
        match = MARK.fullmatch(line.strip())
        if match:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            rows = []
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(lines[j])
                j += 1
            tables.append((match.group(1), rows))
    return tables


def problems(text, root):
    """What is wrong with the README's marked tables: empty tables, missing files, rows not in their file."""
    found = []
    for source, rows in readme_tables(text):
        path = os.path.join(root, source)
        if len(rows) < 3:
            found.append(f"the table marked {source} has no rows")
        elif not os.path.exists(path):
            found.append(f"README cites {source}, which is not committed")
        else:
            committed = set(open(path).read().splitlines())
            found += [f"{source} does not hold the README row {row}" for row in rows if row not in committed]
    return found


def log_tables():
    """[(results file, analyze.py arguments)] for every table made from rl.py logs."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.md"), recursive=True)):
        match = COMMAND.fullmatch(open(path).readline().strip())
        if match:
            found.append((os.path.relpath(path, ROOT), shlex.split(match.group(1))))
    return found


def test_every_marked_readme_table_is_rows_of_its_committed_file():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert problems(text, ROOT) == []


def test_the_check_catches_a_changed_number(tmp_path):
    (tmp_path / "r.md").write_text("| a | b |\n|---|---|\n| x | 1.0 |\n")
    good = "<!-- from r.md -->\n\n| a | b |\n|---|---|\n| x | 1.0 |\n"
    assert problems(good, tmp_path) == []
    assert problems(good.replace("1.0", "1.5"), tmp_path) == ["r.md does not hold the README row | x | 1.5 |"]
    assert problems(good.replace("r.md", "gone.md"),
                    tmp_path) == ["README cites gone.md, which is not committed"]


def test_tables_made_from_logs_are_rewritten_identically(tmp_path, monkeypatch, capsys):
    tables = log_tables()
    assert len(tables) >= 5
    monkeypatch.chdir(ROOT)
    for source, argv in tables:
        argv[argv.index("--results") + 1] = str(tmp_path)
        analyze.main(argv)
        capsys.readouterr()
        name = argv[argv.index("--name") + 1]
        fresh = open(tmp_path / f"{name}.md").read().splitlines()[1:]  # line 1 names the output folder
        assert fresh == open(source).read().splitlines()[1:], f"{source} differs from its logs"


SCRIPTS = ("model.py", "data.py", "pretrain.py", "rl.py", "analyze.py")  # the method, told in five files
TOP = {"README.md", "requirements.txt", ".gitignore", ".ci", "tests", "checkpoints", "results",
       "lab", *SCRIPTS}


def test_the_house_is_the_design_cards():
    """At the top only the five scripts, the data folders and one package; the package's modules each say
    what they are for and why a first reading may skip them, and never import the scripts that tell the
    method (the arrows go one way: scripts -> lab -> model.py and data.py)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if tracked:  # a git checkout (an unpacked copy has no list to check)
        assert {path.split("/")[0] for path in tracked} <= TOP
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py"))) == sorted(SCRIPTS)
    for path in glob.glob(os.path.join(ROOT, "lab", "*.py")):
        source = open(path).read()
        doc = source.split('"""')[1] if source.startswith('"""') else ""
        assert "skip" in doc, f"{path}: its docstring says what it is for and why a reader may skip it"
        assert not re.search(r"^\s*(import|from) (pretrain|rl|analyze)\b", source, re.M), path
        assert source.count("\n") <= 400, f"{os.path.relpath(path, ROOT)} is over 400 lines"


def test_every_file_reads_in_one_sitting():
    """The reader's contract: each script at most 450 lines and 2,000 together, the README at most 200, the
    paper's idea (`rl_loss`) on rl.py's first screen, and no script but pre-training's own depending on
    pretrain.py; no line over 110 characters."""
    total = 0
    for name in SCRIPTS:
        with open(os.path.join(ROOT, name)) as f:
            source = f.read()
        total += source.count("\n")
        assert source.count("\n") <= 450, f"{name} is over 450 lines"
        imports_pretrain = re.search(r"^(import pretrain|from pretrain import)", source, re.M)
        assert name == "pretrain.py" or not imports_pretrain
    assert total <= 2000, f"the five scripts hold {total} lines, over 2,000"
    with open(os.path.join(ROOT, "README.md")) as f:
        assert f.read().count("\n") <= README_LINES, f"README.md is over {README_LINES} lines"
    with open(os.path.join(ROOT, "rl.py")) as f:
        assert "def rl_loss(" in "".join(f.readlines()[:60])
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True):
        with open(path) as f:
            long = [n for n, line in enumerate(f, 1) if len(line.rstrip("\n")) > 110]
        assert not long, f"{os.path.relpath(path, ROOT)}: lines over 110 characters: {long}"


README_LINES = 200  # 180 until issue 69: every word defined before use, and the steps of a task fork


# numbers the README quotes from the paper itself (its Tables 1 and 4, N = 7 and 9), which no file of ours
# holds, and its arXiv number
PAPER = {"2502.06533", "98.9", "48.8", "96.4", "78.9", "0.5", "0.33", "0.21", "0.13"}
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")
SOURCE = re.compile(r"(?:results|checkpoints)/[\w./-]+\.md")


def unsourced_numbers(text, root):
    """Decimal numbers in the README outside its marked tables and code: each paragraph (each row, in a
    table) that states one must cite a committed file holding it (or the number is the paper's)."""
    found, units, block, code, marked = [], [], [], False, False
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if line.startswith("```"):
            code = not code
        elif code:
            continue
        elif MARK.fullmatch(stripped):
            marked = True  # the table below is checked row by row against its file by the test above
        elif line.startswith("|"):
            units += [] if marked else [line]
        elif stripped:
            marked = False
            block.append(line)
        elif block:
            units.append(" ".join(block))
            block = []
    for unit in units:
        numbers = [n.lstrip("-") for n in NUMBER.findall(unit) if n.lstrip("-") not in PAPER]
        if not numbers:
            continue
        sources = SOURCE.findall(unit)
        paths = [os.path.join(root, source) for source in sources]
        held = "".join(open(path).read() for path in paths if os.path.exists(path))
        missing = [n for n in numbers if n not in held]
        if not sources or missing:
            found.append(f"{missing or numbers} in '{unit[:60]}...' " + ("not in " + ", ".join(sources)
                                                                        if sources else "cites no file"))
    return found


def test_every_number_the_readme_states_is_in_a_file_it_cites():
    assert unsourced_numbers(open(os.path.join(ROOT, "README.md")).read(), ROOT) == []


def test_the_number_check_catches_an_unsourced_number(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.md").write_text("final 67.5\n")
    assert unsourced_numbers("It starts at 67.5% (`results/r.md`).\n", tmp_path) == []
    assert unsourced_numbers("It starts at 67.5%.\n", tmp_path) != []
    assert unsourced_numbers("It starts at 68.5% (`results/r.md`).\n", tmp_path) != []
    assert unsourced_numbers("| a | 68.5 | `results/r.md` |\n", tmp_path) != []


def test_the_functions_the_readme_points_at_are_in_rl_py():
    """The README points at functions, not at lines of code: each one it names for Eq. 1 and 2 is defined in
    rl.py, and rl_loss calls both."""
    import inspect
    import rl
    readme = open(os.path.join(ROOT, "README.md")).read()
    for name in ("rl_loss", "certainty", "kl_weight"):
        assert f"`{name}`" in readme and callable(getattr(rl, name))
    body = inspect.getsource(rl.rl_loss)
    assert "kl_weight(certainty(" in body and "weight * kl" in body


def test_the_readmes_add5_finding_is_what_curves_computes_from_the_logs(tmp_path, monkeypatch, capsys):
    """The README's add5 row (alpha 10000 minus the standard and minus the KL-matched uniform penalty, final
    accuracy) and its p(right comma) difference are recomputed by `analyze.py curves` from the committed
    logs."""
    monkeypatch.chdir(ROOT)
    readme = open("README.md").read()
    row = next(line for line in readme.splitlines() if line.startswith("| add5, lr 1e-4"))
    standard, uniform = [cell.strip().lstrip("+") for cell in row.split("|")[2:4]]
    comma = re.search(r"paired (\+?-?\d\.\d+ \+- \d\.\d+)\)", readme).group(1).lstrip("+")
    for baseline, final in (("alpha=0,kl_coef=10", standard), ("alpha=0,kl_coef=0.03", uniform)):
        analyze.main(["curves", "results/add5_lr1e-4/add5_report", "--name", "t", "--results", str(tmp_path),
                      "--baseline", baseline])
        capsys.readouterr()
        text = open(tmp_path / "t.md").read()
        paired = text[text.index("Paired per-seed differences"):]
        row = next(line for line in paired.splitlines() if line.startswith("| alpha=10000.0, kl_coef=10.0 |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[2] == final  # N+k final, paired
        if baseline.endswith("0.03"):
            assert cells[6] == comma  # critical p final, lines 1-3, paired


def test_every_path_the_readme_names_exists():
    """A file or folder the README points a reader to is committed (results, checkpoints, tests, lab)."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    named = set(re.findall(r"(?<![\w/])((?:results|checkpoints|tests|lab)/[\w./-]*[\w/])", readme))
    assert named and [path for path in sorted(named) if not os.path.exists(os.path.join(ROOT, path))] == []
