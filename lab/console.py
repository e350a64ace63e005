"""
How a script talks to whoever started it: what it prints, the signals that stop it, the advice to go on.
None of it is about the model or the task; a reader of the method may skip it.

    run_script      main() as a script: printing that fails (a closed pipe, a full disk under `> log`) stops
                    the printing, never the run; Ctrl-C, an operation with no deterministic kernel, and under
                    torchrun a refusal, each one line (from the first rank; the others say nothing)
    kills_stop_like_ctrl_c      SIGTERM and SIGHUP stop a run as Ctrl-C does
    resume_command  the exact command that continues an interrupted run
"""
import contextlib
import os
import signal
import sys

import torch.distributed as dist

try:
    import fcntl  # POSIX (Linux, macOS); on Windows a stream is only checked for being closed
except ImportError:
    fcntl = None


def run_script(main):
    """Run main() as a script: a stream that fails (a closed pipe `| head -1`, a closed stream `>&-`, a full
    disk under `> log`) ends the printing, not the run; a character the terminal cannot encode is escaped; a
    RuntimeError for an operation with no deterministic kernel, and a Ctrl-C the script does not handle
    itself, become one line each. Under torchrun only the first rank speaks: the others end without a word
    when they refuse what it refuses, or when it has stopped (their connection to it closed)."""
    open_closed_streams()
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    sys.stdout, sys.stderr = PrintingMayFail(sys.stdout), PrintingMayFail(sys.stderr)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted (Ctrl-C): stopped; every file it wrote is whole (written atomically)")
    except SystemExit as e:
        if another_rank() and e.code not in (None, 0):  # rank 0 has said the same, once
            sys.exit(1)
        raise
    except RuntimeError as e:
        if another_rank() and first_rank_gone(e):  # rank 0 stopped (and said why)
            sys.exit(1)
        message = deterministic_refusal(e)
        if message is None:
            raise
        sys.exit(message)


def another_rank():
    """Whether this process is a torchrun rank other than the first (after joining the process group)."""
    return dist.is_available() and dist.is_initialized() and dist.get_rank() > 0


def first_rank_gone(error):
    """Whether a RuntimeError says the other end of a message between ranks has gone (gloo's words)."""
    return isinstance(error, getattr(dist, "DistError", ())) or any(
        words in str(error) for words in ("closed by peer", "reset by peer", "remote worker"))


def open_closed_streams():
    """A script started with stdout or stderr closed (`>&-`, a detached job) writes its messages nowhere and
    still does its work. Python then leaves the stream None, or (when a launcher leaked a file it was reading
    onto that descriptor) writes to a file opened read-only; and the next file the script opens could take
    the free descriptor, so that a child process would print into it. Such a descriptor gets /dev/null, and
    the stream writes there."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            if fcntl is None:  # Windows: no access mode to read; a closed descriptor still fails os.fstat
                os.fstat(fd)
                leaked = False
            else:
                leaked = fd > 0 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        except OSError:  # closed
            leaked = True
        if leaked:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # a closed descriptor is the lowest free one: /dev/null may land on it at once
                os.dup2(null, fd)
                os.close(null)
        if fd > 0 and (leaked or getattr(sys, name) is None):
            setattr(sys, name, open(os.devnull, "w"))



class PrintingMayFail:
    """A standard stream (stdout or stderr) whose failure never stops the script: once a write or flush
    fails (its reader gone: BrokenPipeError; a full disk under `> log`: ENOSPC; any other OSError) it
    writes to /dev/null, silently, and the run goes on and writes its files. Everything else passes through
    to the real stream."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError:
            self.writes_nowhere()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except OSError:
            self.writes_nowhere()

    def writes_nowhere(self):
        devnull = open(os.devnull, "w")
        try:  # the descriptor too, so that the flush at exit (of what is still buffered) finds somewhere
            os.dup2(devnull.fileno(), self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        self.stream = devnull

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def kills_stop_like_ctrl_c():
    """Inside: a kill's SIGTERM, or SIGHUP (the terminal closed), stops the script as Ctrl-C does (a
    KeyboardInterrupt, which rl.py answers with where the run stands and how to resume it)."""
    def interrupt(*_):
        raise KeyboardInterrupt
    kinds = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]  # Windows:
    previous = {kind: signal.signal(kind, interrupt) for kind in kinds}  # no SIGHUP
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)


def resume_command(script, argv, name=None, ranks=None):
    """The exact command that continues an interrupted run: the script as it was started (its path, or
    `script` when main() was called from Python; under torchrun, torchrun with the same process count), its
    own arguments (argv, without --force and --resume), the run's real --name when it was chosen for the
    user, then --resume. ranks: the process count to give torchrun (default: this run's)."""
    import shlex
    if list(argv) == sys.argv[1:] and os.path.basename(sys.argv[0]) == script:  # run as a script: its path
        script = sys.argv[0]
    ranks = ranks or int(os.environ.get("WORLD_SIZE", "1") or 1)
    start = ["torchrun", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else ["python"]
    kept, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--force", "--resume"):
            continue
        if name is not None and arg == "--name":
            skip = True
            continue
        if name is not None and arg.startswith("--name="):
            continue
        kept.append(arg)
    if name is not None:  # --name=VALUE: a name that starts with '-' would read as a flag after --name
        kept += [f"--name={name}"] if name.startswith("-") else ["--name", name]
    return shlex.join([*start, script, *kept, "--resume"])


def deterministic_refusal(error):
    """The one-line refusal for a RuntimeError saying an operation has no deterministic kernel, else None."""
    text = str(error)
    if "deterministic" not in text:
        return None
    return (f"error: {text.splitlines()[0][:200]} -- this operation has no deterministic kernel on this GPU: "
            f"rerun with --no-deterministic (repeats then agree to rounding only)")
