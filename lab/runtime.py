"""
Where a run happens: device, precision, threads, seeds, the memory estimate (lab/files.py: where it writes;
lab/ranks.py: more than one process; lab/console.py: what a script prints, signals, the resume advice).
Every script calls these; none of it is about the model or the task.

    device      pick_device (auto: cuda, then mps, then cpu), device_type, synchronize
    precision   autocast_dtype (training), generation_dtype (sampling), mixed_precision
    threads     set_threads; seeds: seed_everything (and deterministic kernels on CUDA)
    provenance  what a run ran on (code commit, machine, threads, torch), for its config
    memory      training_gb, too_big: refuse a run that cannot fit before it starts
    flags       add_number, number: a flag's type and range in one place, refused in one line

A reader of the method may skip it: the same algorithm runs whatever device or precision it picks.
"""
import argparse
import math
import os
import platform
import random
import subprocess
import sys

import torch

# -----------------------------------------------------------------------------
# device

DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:INDEX or mps"


def pick_device(name):
    """The device for --device name, as a string torch accepts ('cpu', 'cuda', 'cuda:1', 'mps'); exits with
    one line if it is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        sys.exit(f"error: unknown --device {name!r}; use {DEVICE_HELP}")
    if kind == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device {name} but no CUDA GPU is visible; use --device auto or cpu")
    if index and int(index) >= torch.cuda.device_count():
        sys.exit(f"error: --device {name} but only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                 f"(indices from 0)")
    if kind == "mps" and not torch.backends.mps.is_available():
        sys.exit("error: --device mps but Apple MPS is not available; use --device auto or cpu")
    return name


def device_type(device):
    """'cuda' for 'cuda:1': what torch.autocast and per-kind rules want."""
    return str(device).partition(":")[0]


def synchronize(device):
    """Wait until the device has done the work queued so far (GPUs run asynchronously): for timing."""
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)
    elif device_type(device) == "mps":
        torch.mps.synchronize()


# -----------------------------------------------------------------------------
# precision

DTYPES = ["auto", "float32", "bfloat16"]
DETERMINISM = ("CUDA: deterministic kernels, the same numbers run after run and a bit-identical --resume "
               "(default; slower); --no-deterministic: faster, repeats agree to rounding only")
DTYPE_HELP = ("autocast precision (default auto: train in bfloat16 where the hardware computes it natively, "
              "generate in float32)")


def autocast_dtype(name, device):
    """The autocast dtype for --dtype name (auto, float32, bfloat16): None means float32.
    auto: bfloat16 where the hardware computes in it natively (NVIDIA GPUs from Ampere on, CPUs with AMX or
    AVX512-BF16). Older GPUs (T4, V100, GTX 16xx, RTX 20xx) only emulate it: slow, and their attention falls
    back to a kernel that stores the T x T map, so auto keeps float32 there."""
    if name == "float32":
        return None
    supported = {"cuda": lambda: torch.cuda.is_bf16_supported(including_emulation=False),
                 "cpu": lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                 "mps": lambda: False}[device_type(device)]()
    if name == "bfloat16" or supported:
        return torch.bfloat16
    return None


def generation_dtype(name, device):
    """The autocast dtype to generate with: float32 with --dtype auto on every device, else --dtype's.
    Two reasons. Speed: decoding one token reads the whole KV cache; on a CPU that ran 1.9x faster in
    float32 than in bfloat16 (a 2-core CPU with native bfloat16, 64 rows: results/speed/epyc/
    bench_batch64*.txt), and on a GPU a step of this 0.9M-parameter model is a few microseconds of
    arithmetic behind some hundred kernel launches, so bfloat16 has nothing to save. Numbers: bfloat16
    rounding flips near-ties of greedy decoding (add7.pt on 8 digits: 63.5% against 67.5%), so float32
    everywhere starts every run from the same accuracy. --dtype bfloat16 generates in bfloat16."""
    return None if name == "auto" else autocast_dtype(name, device)


def precision_name(dtype):
    """The name of an autocast dtype as autocast_dtype returns it: float32 for None, else e.g. bfloat16."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def mixed_precision(device, dtype):
    """The autocast context for a dtype chosen by autocast_dtype; does nothing when that is None."""
    return torch.autocast(device_type(device), dtype=dtype or torch.float32, enabled=dtype is not None)


# -----------------------------------------------------------------------------
# threads and seeds

def set_threads(threads):
    """CPU threads for torch's operations; None keeps torch's default (one per core). Two runs that
    each use every core of a small machine thrash: give each run its share (README: "On a GPU, and more
    than one process"; results/speed/README.md)."""
    if threads is not None:
        cores = os.cpu_count() or threads
        if threads > cores:  # more threads than cores only queue for them (measured: 20x slower)
            print(f"note: --threads {threads} is more than this machine's {cores} cores; using {cores}",
                  file=sys.stderr)
            threads = cores
        torch.set_num_threads(threads)


def seed_everything(seed, device="cpu", deterministic=True):
    """Python's and torch's global generators (numpy's is never used); on CUDA also deterministic kernels.
    CUDA: the same seed gives the same numbers run after run (and a resumed run ends bit-identically) only
    with deterministic kernels and cuBLAS's fixed workspace. They are strict: attention's backward then takes
    its deterministic kernels, token writes take the deterministic (sort-based) index kernels, and an
    operation that has none stops the run (lab/console.py's `deterministic_refusal` turns that into one
    line). They cost speed; deterministic=False (--no-deterministic) turns them off: repeats then agree to
    rounding only.
    CPUs are deterministic anyway; Apple MPS has no such switch."""
    random.seed(seed)
    torch.manual_seed(seed)
    if device_type(device) == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG",
                                  ":4096:8")  # read when cuBLAS starts: before any matmul
        torch.use_deterministic_algorithms(deterministic)


def provenance(device):
    """What a run ran on, recorded beside its settings: the code's git commit ('+changes' if the tracked
    files differ from it), the CPU threads, the CPU model or the GPU, and torch's version."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        commit += "+changes" if changed and commit != "unknown" else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    kind = device_type(device)
    if kind == "cuda":
        machine = torch.cuda.get_device_name(torch.device(device))
    elif kind == "mps":
        machine = f"Apple MPS ({platform.machine()})"
    else:
        machine = cpu_model()
    return {"commit": commit, "threads": torch.get_num_threads(), "machine": machine,
            "torch": str(torch.__version__)}  # a plain str: checkpoints load with weights_only


def cpu_model():
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            return f"{names[0]} ({len(names)} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# -----------------------------------------------------------------------------
# memory

def training_gb(config, rows, length, attention_maps=False):
    """About how much memory (GB) one AdamW step on rows x length tokens needs: per layer some 24 float32
    activations of width n_embd per token, plus the logits, plus the weights, their gradients and AdamW's
    two moments. Fused attention (CPU, CUDA) stores no T x T map; attention_maps=True adds two per head and
    layer (the probabilities and their gradient), as attention that is not fused keeps (Apple MPS).
    Measured for the default model on a CPU: 0.40 GB for 16 x 500 tokens (estimate 0.40), 0.78 GB for
    64 x 300 (estimate 0.95)."""
    activations = rows * length * (config.n_layer * 24 * config.n_embd + 3 * config.vocab_size)
    if attention_maps:
        activations += 2 * rows * config.n_layer * config.n_head * length ** 2
    embeddings = (config.vocab_size + config.block_size) * config.n_embd
    weights = 12 * config.n_layer * config.n_embd ** 2 + embeddings
    return (activations + 4 * weights) * 4 / 1e9


def too_big(config, rows, length, device):
    """A one-line refusal if training on rows x length tokens would not fit in the device's memory, else None.
    The budget: a GPU's memory; on Apple MPS what torch recommends at most (RAM shared with the system);
    on a CPU the physical RAM."""
    kind = device_type(device)
    need = training_gb(config, rows, length, attention_maps=kind == "mps")
    if kind == "cuda":
        have = torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9
    elif kind == "mps":
        have = torch.mps.recommended_max_memory() / 1e9
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    if need <= have:
        return None
    return (f"training this model on {rows} sequences of {length} tokens per step needs about {need:.0f} GB "
            f"and this {kind} device has {have:.0f} GB")


# -----------------------------------------------------------------------------
# flags: a number and its range, declared in one place; the flags every training script takes

def add_runtime_flags(parser):
    """--device, --threads, --dtype and --deterministic, the same in pretrain.py and rl.py."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_number(parser, "--threads", int, None, "CPU threads (default: all cores)", at_least=1)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help=DETERMINISM)


def add_number(parser, flag, kind, default, help, **rules):
    """parser.add_argument for a number flag with its range (rules: see number), in one line of the caller."""
    parser.add_argument(flag, type=number(flag, kind, **rules), default=default, help=help)


def number(flag, kind=float, at_least=None, above=None, at_most=None, below=None, message=None):
    """An argparse type= for `flag`: parses `kind` and refuses, in one line, what is out of range (and, for
    floats, what is not finite). message replaces the stated range, for a rule worth a reason."""
    def parse(text):
        value = kind(text)  # a ValueError becomes argparse's "invalid int value: 'many'"
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number")
        ok = ((at_least is None or value >= at_least) and (above is None or value > above)
              and (at_most is None or value <= at_most) and (below is None or value < below))
        if not ok:
            raise argparse.ArgumentTypeError(message or f"{flag} must be "
                                             f"{describe_range(kind, at_least, above, at_most)}")
        return value
    parse.__name__ = kind.__name__
    return parse


def describe_range(kind, at_least, above, at_most):
    """'positive', 'non-negative', 'at least 1', 'at most 65536', or two of them joined."""
    words, show = [], (lambda v: str(v) if kind is int else f"{v:g}")  # an int in full: 10000000, not 1e+07
    if above == 0:
        words.append("positive")
    elif above is not None:
        words.append(f"above {show(above)}")
    if at_least == 0 and kind is float:
        words.append("non-negative")
    elif at_least is not None:
        words.append(f"at least {show(at_least)}")
    if at_most is not None:
        words.append(f"at most {show(at_most)}")
    return " and ".join(words)
