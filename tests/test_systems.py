"""The project on systems without POSIX's fcntl (Windows): every script and module imports, and a tiny RL run
goes through, with `import fcntl` failing as it does there. CI runs Linux only, so this is how the others
are checked: Windows by this test, macOS (which has fcntl) by the Linux suite."""
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# run in a fresh interpreter: fcntl is made unimportable before anything of ours is imported
WITHOUT_FCNTL = "import sys; sys.modules['fcntl'] = None  # `import fcntl` now raises ImportError\n"


def modules():
    scripts = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))]
    package = ["lab." + os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "lab", "*.py"))
               if not p.endswith("__init__.py")]
    return sorted(scripts) + sorted(package)


def test_every_script_and_module_imports_without_fcntl():
    names = modules()
    assert {"rl", "pretrain", "analyze", "lab.runtime", "lab.files"} <= set(names)
    code = WITHOUT_FCNTL + "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    code += "assert 'fcntl' not in sys.modules or sys.modules['fcntl'] is None\nprint('imported')\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr


def test_a_tiny_rl_run_goes_through_without_fcntl_and_says_there_is_no_lock(tiny_checkpoint, tmp_path):
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "8", "--eval-size", "4", "--out", str(tmp_path), "--name", "nofcntl",
             "--device", "cpu", "--threads", "1"]
    code = WITHOUT_FCNTL + f"sys.argv = ['rl.py'] + {flags!r}\nimport runpy\nrunpy.run_path('rl.py', " \
                           "run_name='__main__')\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "done: N+1" in r.stdout and (tmp_path / "nofcntl" / "metrics.jsonl").exists()
    assert r.stderr.count("note: this system has no file locks") == 1  # said once, not per lock
