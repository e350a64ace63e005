"""
The task: multi-digit addition with a scratchpad, as text and as tokens. This file is the only one that
knows it. pretrain.py, rl.py and lab/bench.py treat a problem as an opaque value (here a pair (a, b)) and
call the task through these names, TASK below; a fork that teaches another task rewrites them here
(tests/test_task.py plugs a toy task, reversing a digit string, into pre-training and RL this way):

    prompt(problem)                 'Input:\\n1234+567\\nTarget:'
    target(problem)                 what the model should write after the prompt: '\\n<scratch>\\n[1,2,3,4]
                                    + [5,6,7] , A=[] , C=0 , ...\\n</scratch>\\n1 8 0 1\\n'
    reward(problem, completion)     1.0 if the answer line is exactly right, else 0.0
    pretrain_problem(n, rng)        a training problem of size 1..n (operands of 1..n digits)
    rl_problem(n, k, rng)           a training problem of the paper's "N+k" distribution
    eval_set(kind, k, size, ...)    a fixed list of held-out problems ("identical": k+k digits, ...)
    rl_eval_sets(n, k, size)        the sets an RL run is evaluated on (test, validation, comfort zone)
    longest_sequence(k)             positions the longest size-k problem needs
    critical_positions(problem, n)  where in target(problem) the paper's critical tokens sit
    Stop                            when a row of a generation is finished (its answer line is complete)

Built on them, for any task: encode / decode (one character = one token, as in the paper), make_batch
(padded (x, y) with the loss on the completion only), prompt_batch, first_error, critical_states
(lab/generation.py's complete and accuracy decode the problems with a model).

Every problem is either a training problem or a held-out problem, decided by a hash of its text
(`is_held_out`). Training samplers never return held-out problems and evaluation samplers return
nothing else, so an evaluation set can never leak into training.
"""
import random
import zlib

import torch

TASK = ("prompt", "target", "reward", "pretrain_problem", "rl_problem", "eval_set", "rl_eval_sets",
        "longest_sequence", "critical_positions", "Stop")  # the names the scripts call: see above
NAME = "addition"  # the task's name, kept in every checkpoint: a model of another task is refused

# -----------------------------------------------------------------------------
# text format (the paper's section 2, after Lee et al. 2024)


def prompt(problem) -> str:
    a, b = problem
    return f"Input:\n{a}+{b}\nTarget:"


def target(problem) -> str:
    """The text the model should write after the prompt: for addition, the scratchpad and the answer line."""
    return scratchpad(*problem)


def _digits(n: int) -> list[str]:
    return list(str(n))


def scratchpad(a: int, b: int) -> str:
    """Everything the model writes after the prompt, from '\\n<scratch>\\n' to the final '\\n'."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a} and {b}")
    top, bottom, acc, carry = _digits(a), _digits(b), [], 0
    lines = []
    while top or bottom:
        x = int(top[-1]) if top else 0  # an exhausted operand contributes 0
        y = int(bottom[-1]) if bottom else 0
        s = x + y + carry
        lines.append(f"[{','.join(top)}] + [{','.join(bottom)}] , A=[{','.join(acc)}] , C={carry} , "
                     f"{x}+{y}+{carry}={s} , A->{s % 10} , C->{s // 10}\n")
        acc.insert(0, str(s % 10))  # A is written most significant digit first
        carry = s // 10
        top, bottom = top[:-1], bottom[:-1]
    # the last line has no ' , ' before 'C=': an inconsistency of the original format, kept on purpose
    lines.append(f"[] + [] , A=[{','.join(acc)}] C={carry} , END\n")
    return "\n<scratch>\n" + "".join(lines) + "</scratch>\n" + answer_line(a + b) + "\n"


def answer_line(total: int) -> str:
    """The spaced digits of the result: 1801 -> '1 8 0 1'. A final carry is simply the leading digit."""
    return " ".join(str(total))


def parse_answer(completion: str) -> int | None:
    """The integer on the line after '</scratch>', or None. Never raises.

    The line must be spaced digits exactly as `answer_line` writes them (no leading zero, single
    spaces, a terminating newline), so `parse_answer(c) == a + b` is the paper's success criterion:
    the text between '</scratch>\\n' and the next '\\n' equals the spaced result.
    """
    if not isinstance(completion, str):
        return None
    marker = "</scratch>\n"
    start = completion.find(marker)
    if start < 0:
        return None
    rest = completion[start + len(marker):]
    end = rest.find("\n")
    if end < 0:
        return None  # truncated: the answer line never ended
    line = rest[:end]
    digits = line.split(" ")
    if not digits or not all(len(d) == 1 and d in "0123456789" for d in digits):
        return None
    if len(digits) > 1 and digits[0] == "0":
        return None
    return int("".join(digits))


def reward(problem, completion: str) -> float:
    """1.0 if the completion's answer line is exactly right, else 0.0 (scratchpad errors do not matter)."""
    a, b = problem
    return float(parse_answer(completion) == a + b)


def first_error(problem, completion: str) -> int | None:
    """Offset of the first character where `completion` leaves the correct text target(problem), or None if
    it writes the whole of it. A completion that stops early errs where it stopped."""
    right = target(problem)
    for i, (got, want) in enumerate(zip(completion, right)):
        if got != want:
            return i
    return None if len(completion) >= len(right) else len(completion)


# -----------------------------------------------------------------------------
# tokens: one character = one token

PAD = "\x00"  # padding; never appears in real text
VOCAB = PAD + "\n +,-/:<=>ACDEINT[]aceghinprstu0123456789"  # every character the format uses
STOI = {ch: i for i, ch in enumerate(VOCAB)}
PAD_ID = STOI[PAD]
NEWLINE_ID = STOI["\n"]
SLASH_ID = STOI["/"]  # only appears in '</scratch>': after it, the next newline but one ends the answer


def encode(text: str) -> list[int]:
    try:
        return [STOI[ch] for ch in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary {VOCAB[1:]!r}") from None


def decode(ids) -> str:
    """Token ids (any iterable of ints) back to text; padding is dropped."""
    return "".join(VOCAB[i] for i in ids if i != PAD_ID)


# -----------------------------------------------------------------------------
# problems

def operand(digits: int, rng: random.Random) -> int:
    """A uniform `digits`-digit number; a 1-digit operand is uniform in 0..9."""
    if digits < 1:
        raise ValueError(f"an operand needs at least 1 digit, got {digits}")
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def is_held_out(a: int, b: int) -> bool:
    """About 10% of all problems are reserved for evaluation, chosen by a hash of the problem."""
    return zlib.crc32(f"{a}+{b}".encode()) % 10 == 0


def _draw(lengths, rng: random.Random, held_out: bool) -> tuple[int, int]:
    """Draw operands of the lengths given by `lengths()` until the problem is on the requested side."""
    while True:
        la, lb = lengths()
        a, b = operand(la, rng), operand(lb, rng)
        if is_held_out(a, b) == held_out:
            return a, b


def pretrain_problem(n: int, rng: random.Random) -> tuple[int, int]:
    """Pre-training: each operand's length uniform in 1..n (balanced over lengths)."""
    return _draw(lambda: (rng.randint(1, n), rng.randint(1, n)), rng, held_out=False)


def rl_lengths(n: int, k: int, rng: random.Random) -> tuple[int, int]:
    """The paper's 'N+k' lengths: one operand (first or second at random) has exactly n+k digits;
    the other has n+1..n+k digits with probability 0.5, else 1..n."""
    long = n + k
    other = rng.randint(n + 1, n + k) if rng.random() < 0.5 else rng.randint(1, n)
    return (long, other) if rng.random() < 0.5 else (other, long)


def rl_problem(n: int, k: int, rng: random.Random, held_out: bool = False) -> tuple[int, int]:
    return _draw(lambda: rl_lengths(n, k, rng), rng, held_out)


def eval_set(kind: str, k: int, size: int, seed: int = 1234, n: int | None = None,
             exclude=()) -> list[tuple[int, int]]:
    """A deterministic list of held-out problems, none of them in `exclude` (how a validation set is kept
    disjoint from the evaluation set: another seed, and any problem both draws share skipped).

    kind = 'identical': both operands have exactly k digits.
    kind = 'varying':   k digits + m digits, m uniform in 1..k.
    kind = 'rl':        the 'N+k' RL distribution, with n the pre-training length.
    kind = 'pretrain':  the pre-training distribution over 1..k digits (the comfort zone).
    """
    rng = random.Random(f"{kind}-{k}-{n}-{seed}")  # string seeds are stable across runs and machines
    if kind == "identical":
        lengths = lambda: (k, k)
    elif kind == "varying":
        lengths = lambda: (k, rng.randint(1, k))
    elif kind == "rl":
        if n is None:
            raise ValueError("eval_set('rl', ...) needs n, the pre-training length")
        lengths = lambda: rl_lengths(n, k, rng)
    elif kind == "pretrain":
        lengths = lambda: (rng.randint(1, k), rng.randint(1, k))
    else:
        raise ValueError(f"unknown evaluation set kind {kind!r}: use identical, varying, rl or pretrain")
    exclude, problems = set(exclude), []
    while len(problems) < size:
        problem = _draw(lengths, rng, held_out=True)
        if problem not in exclude:
            problems.append(problem)
    return problems


VALIDATION_SEED = 4321  # eval_set's default seed, 1234, draws the evaluation (test) set


def rl_eval_sets(n: int, k: int, size: int) -> dict[str, list[tuple[int, int]]]:
    """The sets an RL run from an n-digit model is evaluated on, `size` held-out problems each: 'plus', the
    N+k test set that results are reported on; 'val', the same distribution but disjoint, that
    hyper-parameters are chosen on; 'comfort', 1..n digits (what pre-training taught); 'critical', n+1 digits
    each (the critical-token probability)."""
    exist = held_out_count(n, k)
    if exist is not None and 2 * size > exist:
        raise ValueError(f"only {exist} held-out problems of the 'N+{k}' distribution exist for N = {n}, and "
                         f"its test and validation sets are disjoint: at most {exist // 2} each")
    plus = eval_set("rl", k, size, n=n)
    return {"plus": plus, "val": eval_set("rl", k, size, seed=VALIDATION_SEED, n=n, exclude=plus),
            "comfort": eval_set("pretrain", n, size), "critical": eval_set("identical", n + 1, size)}


def held_out_count(n: int, k: int, limit: int = 2_000_000) -> int | None:
    """How many distinct held-out problems the 'N+k' distribution has, or None when it has more than `limit`
    problems in all (then there are plenty): a set larger than what exists would be drawn forever."""
    def count(length):  # numbers with that many digits (1 digit: 0..9)
        return 10 if length == 1 else 9 * 10 ** (length - 1)
    others = range(1, n + k + 1)
    pairs = {(n + k, other) for other in others} | {(other, n + k) for other in others}
    if sum(count(la) * count(lb) for la, lb in pairs) > limit:
        return None
    def numbers(length):
        return range(10) if length == 1 else range(10 ** (length - 1), 10 ** length)
    return sum(is_held_out(a, b) for la, lb in pairs for a in numbers(la) for b in numbers(lb))


# -----------------------------------------------------------------------------
# batches

def make_batch(problems, device="cpu", completions=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs x and targets y for next-token prediction, shape (B, T).

    y[i, t] is the token after x[i, t], or -1 (ignored by the loss) where that token belongs to the
    prompt or is padding: the model is trained to write the scratchpad, never to predict the question.
    `completions` (one string per problem) replace the correct texts, to read a model's own text.
    """
    texts = completions or [target(problem) for problem in problems]
    rows = [(encode(prompt(problem)), encode(text)) for problem, text in zip(problems, texts)]
    width = max(len(p) + len(c) for p, c in rows) - 1
    x = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        seq = torch.tensor(p + c)
        x[i, :len(seq) - 1] = seq[:-1]
        y[i, len(p) - 1:len(seq) - 1] = seq[len(p):]  # targets start at the first completion token
    return x.to(device), y.to(device)


def prompt_batch(problems, device="cpu", prefixes=None) -> torch.Tensor:
    """Left-padded prompts, shape (B, T), ready for `GPT.generate`; `prefixes` (one string per problem)
    are appended to the prompts, to continue a completion from a chosen point."""
    rows = [encode(prompt(problem) + (prefixes[i] if prefixes else "")) for i, problem in enumerate(problems)]
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, width - len(r):] = torch.tensor(r)
    return x.to(device)


def generated_batch(prompts, sequences):
    """(inputs, actions, mask) for teacher-forced passes over generated text: `sequences` are the left-padded
    `prompts` followed by what the model wrote. Each row's left padding moves to its end, so the rows need no
    padding mask; actions[:, t] is the token after inputs[:, t], and mask is 1 where that token was
    generated, 0 on the prompt and on padding. (Not make_batch from the decoded texts: decoding drops a
    padding token that sampling can, rarely, emit mid-row, and the update must see the tokens sampled.)"""
    lead = (prompts == PAD_ID).sum(1, keepdim=True)
    sequences = shift_left(sequences, lead[:, 0])
    inputs, actions = sequences[:, :-1], sequences[:, 1:]
    columns = torch.arange(sequences.size(1) - 1, device=sequences.device)[None, :]
    generated = columns >= prompts.size(1) - lead - 1
    return inputs, actions, (generated & (actions != PAD_ID)).float()


def critical_states(problems, actions, n: int, lines: int | None = 3) -> torch.Tensor:
    """A (B, T) float mask over the states of generated_batch's `actions`: 1 where the next right character
    is one of critical_positions(problem, n, lines) and the row's text before it is right (the states the
    paper tracks, "while the copy is correct"). Zeros for a task without a correct text."""
    found = torch.zeros(actions.shape, dtype=torch.float)
    rows = actions.tolist()
    for i, problem in enumerate(problems):
        right = target(problem)
        if right is None:
            continue
        start, truth = len(encode(prompt(problem))) - 1, encode(right)  # the state that writes character 0
        wrote = rows[i][start:start + len(truth)]
        for c in critical_positions(problem, n, lines=lines):
            if c < len(wrote) and wrote[:c] == truth[:c]:
                found[i, start + c] = 1.0
    return found.to(actions.device)


def shift_left(sequences, lead):
    """Each row of sequences (B, W) moved lead[row] columns to the left, padding coming in on the right."""
    columns = torch.arange(sequences.size(1), device=sequences.device)[None, :] + lead[:, None]
    return sequences.gather(1, columns.clamp(max=sequences.size(1) - 1)).masked_fill(
        columns >= sequences.size(1), PAD_ID)


def draft_batch(problems, device="cpu", prefixes=None):
    """The correct continuation of each prompt (after its prefix, if any: the rest of target(problem) past
    the prefix's length) as token ids padded on the right, (B, L): GPT.generate's free draft. None when
    the task has no correct text (its target is None)."""
    texts = [target(problem) for problem in problems]
    if any(text is None for text in texts):
        return None
    rows = [encode(text[len(prefixes[i]) if prefixes else 0:]) for i, text in enumerate(texts)]
    x = torch.full((len(rows), max(1, max(len(r) for r in rows))), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return x.to(device)


def sequence_length(problem) -> int:
    return len(prompt(problem)) + len(target(problem))


def longest_sequence(k: int) -> int:
    """Positions the longest K+K problem needs (two K-digit nines): whether K digits fit a model."""
    return sequence_length((10 ** k - 1, 10 ** k - 1))


# -----------------------------------------------------------------------------
# when a generation is finished (generation.complete decodes the task's problems with a model)

class Stop:
    """GPT.generate's stop rule for this task: a row is finished at the second newline after '</scratch>'
    (the end of its answer line). Made per generation as Stop(rows, device); holds each row's state;
    keep(rows) follows the rows that stay in a batch."""

    def __init__(self, rows, device):
        self.seen_slash = torch.zeros(rows, dtype=torch.bool, device=device)
        self.newlines = torch.zeros(rows, dtype=torch.long, device=device)

    def __call__(self, tok):
        """Take each row's new token; return which rows are finished."""
        self.seen_slash |= tok == SLASH_ID
        self.newlines += (self.seen_slash & (tok == NEWLINE_ID)).long()
        return self.newlines >= 2

    def keep(self, rows):
        self.seen_slash, self.newlines = self.seen_slash[rows], self.newlines[rows]


def critical_positions(problem, n: int, lines: int | None = 3) -> list[int]:
    """Character offsets, in target(problem), of the tokens the paper tracks as critical (its section 6).

    For a model pre-trained on 1..n digits: on scratchpad line j = 1..lines, every operand list that is
    longer than any list seen at line j in pre-training (more than n - j + 1 digits) must continue with
    a ',' after its (n - j + 1)-th digit, where the pre-trained model tends to close the list with ']'.
    The paper tracks lines 1-3; lines=None gives every line.
    """
    text = target(problem)
    starts = [i + 1 for i, ch in enumerate(text) if ch == "\n"][1:]  # line 1 starts after '<scratch>\n'
    found = []
    for j, start in enumerate(starts[:lines] if lines else starts, 1):
        line = text[start:text.index("\n", start)]
        if not line.startswith("[") or line.startswith("[] + []"):
            break
        seen = n - j + 1  # the longest list that pre-training ever showed on line j
        if seen < 1:
            break
        for bracket in (0, line.index("[", line.index("]"))):  # first and second operand lists
            digits = line[bracket + 1:line.index("]", bracket)].count(",") + 1
            if line[bracket + 1] != "]" and digits > seen:
                found.append(start + bracket + 2 * seen)  # '[' d , d , ... : the comma after digit `seen`
    return found
