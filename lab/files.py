"""
Where the scripts write, and how: every output replaced atomically, so that a run cut off mid-write or a
write that fails (a full disk) leaves the last complete version and no half-written file; and one writer
per output, so that two runs never mix or lose each other's work.

    replace_atomically, atomic_save, write_text, save_figure     written whole or not at all
    hold_lock, release_locks                                      one writer per run folder or output file

A reader of the method may skip it: it is how files are written safely, not what is written.
"""
import atexit
import os
import sys

import torch


def replace_atomically(path, write):
    """write(tmp) to a temporary file beside path, then rename it to path: a run cut off mid-write leaves
    the old file intact (a kill leaves at most a stale temporary file, which the scripts remove at start).
    A write that fails (a full disk, a folder that cannot be written) removes its temporary file and
    ends the script with one line."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:120]
            sys.exit(f"error: cannot write {path} ({reason}); {path} keeps its last complete version. "
                     "Free some disk space or choose another output")
        raise


def atomic_save(obj, path):
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def write_text(path, text, quiet=False):
    """A text file (table, log) written atomically; says so on stderr unless quiet."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(text)
    replace_atomically(path, write)
    if not quiet:
        print(f"wrote {path}", file=sys.stderr)


def pyplot():
    """matplotlib's pyplot, drawing without a display (imported here: only the scripts that draw need it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    """A matplotlib figure as a PNG, written atomically; then closed (pyplot keeps open figures alive)."""
    import matplotlib.pyplot as plt  # here: only the scripts that draw need matplotlib
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


HELD = []  # (path, open file) of each lock this process holds (the system frees them if it dies)


NO_LOCKS_SAID = []  # the note that locks are off is printed once per process


def hold_lock(path, what):
    """Make this process the only writer of `what` (a run folder or an output file) until it ends: an
    exclusive lock on the file `path`. A second writer is refused in one line that names the first one's
    process id. A run that was killed holds nothing: the system frees its lock when it dies, so a stale
    lock file never blocks a resume. (No fcntl, as on Windows: no lock, and a note says so once.)"""
    try:
        import fcntl
    except ImportError:
        if not NO_LOCKS_SAID:
            NO_LOCKS_SAID.append(True)
            print("note: this system has no file locks (no fcntl, as on Windows): nothing stops a second "
                  f"process from writing {what} at the same time; run one writer per output", file=sys.stderr)
        return
    while True:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            f = open(path, "a+")
        except OSError as e:
            sys.exit(f"error: cannot write {what} ({e.strerror}); choose another output")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            sys.exit(f"error: {what} is being written by another process (pid {holder}); wait for it to end "
                     "or choose another output")
        try:  # the file may have been removed and made anew by another writer since we opened it
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    HELD.append((path, f))


@atexit.register
def release_locks():
    """Free every lock this process holds (at its end, or when a script's main returns: tests run several
    in one process), removing the lock files first (a writer waiting on a removed file tries again)."""
    while HELD:
        path, f = HELD.pop()
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                os.remove(path)
        except (OSError, ValueError):
            pass
        f.close()
