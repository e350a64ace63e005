"""
Batched generation with a KV cache, for GPT (model.py: `GPT.generate` calls `generate` here).

    generate         left-padded prompts in, prompts + new tokens out; greedy or sampled; a stop rule;
                     the plain reference loop, written to be read
    _generate_fast   the same tokens with less work: `_decode`, the token-by-token loop rollouts use
    _generate_with_draft
                     the correct answer as a free draft: one pass checks all its positions at once, and
                     only rows that leave it are decoded token by token
    sample           greedy, or a draw from softmax(logits / temperature) that does not depend on which
                     other rows are still decoded
    complete, accuracy
                     the model's completions of the task's problems (data.py), in batches of similar
                     lengths; exact-match accuracy
    continue_from    the model's continuations of given starts of the completions (analyze.py probe)

A reader of the method may skip this module: `GPT.sample_plainly` in model.py is the same sampling, written
plainly; everything here only makes it faster (tests/test_draft.py and tests/test_model.py check that both
give the same tokens).

Padding (token id 0 of data.VOCAB) never influences a real token: padded keys are masked out.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from data import PAD_ID, shift_left
from lab.runtime import mixed_precision

# rl.py --sampler: how completions are drawn, as (fast, draft) for `complete` and `generate`. All three sample
# the same distribution (tests/test_draft.py); they differ in speed, and in which random numbers they use.
SAMPLERS = {"draft": (True, True),   # a KV cache, and the correct text as a free draft (the default, 2-3x)
            "cache": (True, False),  # a KV cache, token by token
            "plain": (False, False)}  # plain loops: GPT.sample_plainly (training), generate's (evaluation)
LONG = 2000  # problems from which `complete` shows a progress bar: a long evaluation says it is working
CHECK_EVERY_GPU = 16  # decoding steps between looks at which rows are finished, on a GPU (see generate)
PASS_TOKENS_CPU = 8192  # tokens per chunk of a pass without gradient on a CPU: its activations stay in the
# processor's cache (1.5x the tokens/s of 64 rows at once on our 2-core CPU: results/speed/README.md)


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, generator=None, fast=True, stop=None,
             check_every=None, draft=None):
    """Continue left-padded prompts idx (B, T); returns (B, T + new) with new <= max_new_tokens.

    temperature = 0 is greedy decoding. stop: the task's stop rule, made per call as stop(B, device)
    (data.Stop: a row is finished once its answer line is complete); finished rows are filled with
    padding and the loop ends when every row is finished. None: no row stops early.
    draft (B, L): a guess at each row's continuation, token ids padded on the right (data.draft_batch:
    the task's correct text). The correct answer is a free draft: where the model would have written
    it anyway, we check all its positions at once, in one pass, and decode token by token only from
    where a row leaves it (`_generate_with_draft`). Any draft gives the same distribution of texts.
    fast=True (without a draft) takes `_generate_fast`, which gives the same tokens (and, with the same
    generator, the same samples) with less work; the loop below is the plain reference.
    check_every: decoding steps between looks at which rows are finished. A look copies a value from
    the device to Python, which stalls a GPU's queue, so GPUs look every CHECK_EVERY_GPU steps; the
    extra steps only write padding, which is cut off again: the tokens are the same for any value.
    """
    check_every = check_every or (1 if idx.device.type == "cpu" else CHECK_EVERY_GPU)
    if draft is not None:
        return _generate_with_draft(model, idx, draft, max_new_tokens, temperature, generator, stop,
                                    check_every)
    if fast:
        return _generate_fast(model, idx, max_new_tokens, temperature, generator, stop, check_every)
    B, T = idx.shape
    real, caches, logits = _prefill(model, idx, max_new_tokens)
    may_attend = torch.ones(B, 1, 1, T + max_new_tokens, dtype=torch.bool, device=idx.device)
    may_attend[:, 0, 0, :T] = real  # left padding is never attended to
    next_pos = real.sum(1)
    rule = stop(B, idx.device) if stop else None
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    width = torch.zeros((), dtype=torch.long, device=idx.device)  # new tokens up to the last real one
    out = []
    for step in range(max_new_tokens):
        tok = sample(logits, temperature, generator)
        tok = torch.where(done, PAD_ID, tok)
        out.append(tok)
        width = torch.where(done.all(), width, step + 1)
        if rule:
            done |= rule(tok)
        if step == max_new_tokens - 1 or ((step + 1) % check_every == 0 and done.all()):
            break
        logits = model._forward_cached(tok[:, None], next_pos[:, None], may_attend[:, :, :, :T + step + 1],
                                       caches, T + step)[:, -1]
        next_pos = next_pos + 1
    return torch.cat([idx, torch.stack(out, 1)[:, :int(width)]], 1)


def _generate_fast(model, idx, max_new_tokens, temperature, generator, stop, check_every):
    """The plain loop's tokens with less work: the first token from the prompts' pass, the rest from
    `_decode`."""
    B, T = idx.shape
    real, caches, logits = _prefill(model, idx, max_new_tokens)
    first = sample(logits, temperature, generator)
    rule = stop(B, idx.device) if stop else None
    done = rule(first) if rule else torch.zeros(B, dtype=torch.bool, device=idx.device)
    budget = torch.full((B,), max_new_tokens - 1, device=idx.device).masked_fill(done, 0)
    key_bias = _key_bias(F.pad(real, (0, max_new_tokens), value=True), caches[0][0].dtype)
    rest, _ = _decode(model, first, caches, key_bias, T, real.sum(1), budget, rule, temperature, generator,
                      check_every)
    return torch.cat([idx, first[:, None], rest], 1)


def _generate_with_draft(model, idx, draft, max_new_tokens, temperature, generator, stop, check_every):
    """`generate` along a draft. One teacher-forced pass over prompt + draft gives the model's next-token
    distribution at every draft position, and a token is drawn at each exactly as the loop would draw
    it there (greedy: argmax; sampled: from softmax(logits / temperature)). Each row keeps the draft up
    to its first departure plus the token drawn there; only the rows not finished then go on through
    `_decode`, with the KV cache of that same pass. Greedy gives the plain loop's tokens up to
    floating-point near-ties (the pass sums attention in another order than one-token steps); sampling
    draws every token from the plain loop's distribution, with the random numbers used in another
    order (the draws after a row's departure are never used)."""
    B, T = idx.shape
    draft = draft[:, :max_new_tokens]
    L, device = draft.size(1), idx.device
    prompt_len = (idx != PAD_ID).sum(1)
    model._check_length(prompt_len - 1 + max_new_tokens)
    # 1. the pass, every row moved to start at column 0 (prompt, draft, padding): plain causal attention;
    # on a CPU a few rows at a time, whose activations stay in the processor's cache (1.5x faster)
    caches = _empty_caches(model, B, T + L, device)
    rows = shift_left(torch.cat([idx, draft], 1), T - prompt_len)
    at = prompt_len[:, None] - 1 + torch.arange(L + 1, device=device)  # where draft token j is predicted
    chunk = max(1, PASS_TOKENS_CPU // (T + L)) if device.type == "cpu" else B
    logits = []
    for i in range(0, B, chunk):
        part = [(k[i:i + chunk], v[i:i + chunk]) for k, v in caches]  # views: the pass fills the caches
        out = model._forward_cached(rows[i:i + chunk], torch.arange(T + L, device=device).expand(
            len(part[0][0]), -1), None, part)
        logits.append(out.gather(1, at[i:i + chunk, :, None].expand(-1, -1, out.size(-1))))
    drawn = sample(torch.cat(logits), temperature, generator)
    # 2. keep the draft up to the first departure, then the token drawn there (after a whole draft too)
    guess = F.pad(draft, (0, 1), value=PAD_ID)
    accepted = ((drawn == guess) & (guess != PAD_ID)).long().cumprod(1).sum(1)
    written = (accepted + 1).clamp(max=max_new_tokens)
    column = torch.arange(L + 1, device=device)
    head = torch.where(column < accepted[:, None], guess, drawn)
    head = head.masked_fill(column >= written[:, None], PAD_ID)
    # 3. the stop rule reads the kept tokens one by one, as in the loop
    rule = stop(B, device) if stop else None
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    for j in range(int(written.max()) if rule else 0):
        head[:, j].masked_fill_(stopped, PAD_ID)
        ends = rule(head[:, j]) & ~stopped
        written, stopped = torch.where(ends, j + 1, written), stopped | ends
    budget = (max_new_tokens - written).masked_fill(stopped, 0)
    # 4. the rows still writing go on from their last token, each row's cache moved to end at one column
    go = budget.nonzero().squeeze(1)
    rest, lengths = torch.empty(B, 0, dtype=torch.long, device=device), torch.zeros_like(written)
    if len(go):
        pos = prompt_len[go] + written[go] - 1  # the last token's position, and its column in the pass
        end = int(pos.max())
        source = torch.arange(end + int(budget.max()), device=device) - (end - pos)[:, None]
        index = source.clamp(0, T + L - 1)[:, None, :, None]
        for i, layer in enumerate(caches):  # one layer at a time: the old one is freed as we go
            caches[i] = tuple(c[go].gather(2, index.expand(-1, c.size(1), -1, c.size(3))) for c in layer)
        if rule:
            rule.keep(go)
        last = head[go].gather(1, (written[go] - 1)[:, None]).squeeze(1)
        more, lengths[go] = _decode(model, last, caches, _key_bias(source >= 0, caches[0][0].dtype), end,
                                    pos, budget[go], rule, temperature, generator, check_every)
        rest = torch.full((B, more.size(1)), PAD_ID, dtype=torch.long, device=device)
        rest[go] = more
    # each row: its kept tokens, then what it decoded
    both = torch.cat([head, rest], 1)
    take = torch.arange(int((written + lengths).max()), device=device)[None, :]
    take = torch.where(take < written[:, None], take, take - written[:, None] + L + 1)
    new = both.gather(1, take.clamp(max=both.size(1) - 1)).masked_fill(take >= both.size(1), PAD_ID)
    return torch.cat([idx, new], 1)


def _decode(model, tok, caches, key_bias, column, next_pos, budget, rule, temperature, generator,
            check_every):
    """The token-by-token loop with the KV cache. Each row's last token tok (B,), at position next_pos
    (B,), goes into cache column `column` (the same for every row; key_bias (B, 1, 1, S): 0 where a row
    may attend, -inf elsewhere) and the next token is drawn, until each row has written budget[row] more
    tokens or the stop rule (holding the rows' state so far) finishes it. Returns the tokens (B, longest),
    padded after each row's end, and each row's count. Savings over the plain loop, same tokens: the mask
    is an additive bias made once (not a bool mask converted at every layer of every step); finished rows
    leave the batch (their caches are dropped) once a quarter of the rows are finished; every step writes
    one column of the batch's tokens, and attends to a multiple of 8 keys (the columns not yet written are
    masked), which GPU attention kernels take without padding. Sampling draws noise for all B rows at
    every step, as the plain loop does, so a row gets the same sample whichever rows are still decoded."""
    B, device = tok.size(0), tok.device
    steps = int(budget.max()) if B else 0
    out = torch.full((B, steps), PAD_ID, dtype=torch.long, device=device)
    current = out.clone()  # the tokens of the rows still in the batch, one column a step
    rows = torch.arange(B, device=device)  # which original row each batch row is
    lengths, written = torch.zeros_like(budget), torch.zeros_like(budget)
    done = budget <= 0
    key_bias = key_bias.clone()
    key_bias[..., column:] = float("-inf")  # not written yet: each column is opened when its token is
    for step in range(steps):
        if step % check_every == 0:  # a look at the finished rows (see generate's check_every)
            finished = int(done.sum())
            if finished == len(rows):
                break
            if 4 * finished >= len(rows):  # drop them, and the cache columns no row left may attend to
                keep = (~done).nonzero().squeeze(1)
                lengths[rows], out[rows] = written, current
                cut = int((key_bias[keep, 0, 0, :column] == 0).float().argmax(1).min()) if column else 0
                caches = [(k[keep, :, cut:], v[keep, :, cut:]) for k, v in caches]
                key_bias, column = key_bias[keep, ..., cut:], column - cut
                rows, tok, next_pos, current = rows[keep], tok[keep], next_pos[keep], current[keep]
                done, budget, written = done[keep], budget[keep], written[keep]
                if rule:
                    rule.keep(keep)
        key_bias[..., column + step] = 0.0
        keys = min(-(-(column + step + 1) // 8) * 8, key_bias.size(-1))
        logits = model._forward_cached(tok[:, None], next_pos[:, None], key_bias[..., :keys], caches,
                                       column + step)[:, -1]
        # a finished row still in the batch may run past the last position; its tokens are never kept
        next_pos = (next_pos + 1).clamp(max=model.config.block_size - 1)
        tok = sample(logits, temperature, generator, rows=rows, batch=B).masked_fill(done, PAD_ID)
        current[:, step] = tok
        written = written + (~done).long()
        done = done | (written >= budget)
        if rule:
            done = done | rule(tok)
    lengths[rows], out[rows] = written, current
    return out[:, :int(lengths.max()) if B else 0], lengths


def _prefill(model, idx, max_new_tokens):
    """Check that the generation fits, allocate the KV caches and run the left-padded prompts through
    the model. Returns (real: True on prompt tokens, caches, logits for each row's next token)."""
    real = idx != PAD_ID
    positions = (real.cumsum(1) - 1).clamp(min=0)
    model._check_length(positions.max(1).values + max_new_tokens)
    caches = _empty_caches(model, idx.size(0), idx.size(1) + max_new_tokens, idx.device)
    return real, caches, model._forward_cached(idx, positions, causal_mask(real), caches, 0)[:, -1]


def _empty_caches(model, B, length, device):
    """Per block, (keys, values) buffers of shape (B, n_head, length, head_dim), zeros: a step may attend to
    a few columns not yet written (masked, and a masked zero adds nothing, where garbage could be a NaN).
    Under autocast keys and values come out in the autocast dtype, so the buffers take it."""
    head_dim = model.config.n_embd // model.config.n_head
    dtype = model.wte.weight.dtype
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    return [tuple(torch.zeros(B, model.config.n_head, length, head_dim, device=device, dtype=dtype)
                  for _ in range(2)) for _ in model.blocks]


def sample(logits, temperature, generator=None, rows=None, batch=None):
    """Next tokens from logits (R, V): argmax for temperature 0, else a draw from softmax(logits / T).

    The draw is the exponential race, argmax_a p(a) / E_a with E_a ~ Exp(1) independent, which picks a
    with probability p(a) (it is how torch.multinomial draws one sample). Noise is drawn for `batch`
    rows and row r of logits uses noise row rows[r], so the draws do not depend on which rows are
    still being decoded (rows, batch: None = all rows of logits)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    noise = torch.empty(probs.shape if batch is None else (batch, probs.size(-1)),
                        device=probs.device).exponential_(generator=generator)
    # a draw of exactly 0 (some backends round to it) would pick its token whatever its probability, padding
    # included; the smallest positive float keeps p / E finite and leaves every other draw as it is
    noise = noise.clamp_(min=torch.finfo(noise.dtype).tiny)
    return (probs / (noise if rows is None else noise[rows])).argmax(-1)


def _key_bias(may_attend, dtype):
    """(B, S) bool -> (B, 1, 1, S) additive attention bias in the cache's dtype: 0 where True, else -inf."""
    bias = torch.zeros(may_attend.shape, dtype=dtype, device=may_attend.device)
    return bias.masked_fill_(~may_attend, float("-inf"))[:, None, None]


def causal_mask(real):
    """(B, 1, T, T) bool: query t may attend to key s <= t if s is a real token. Every query may also
    attend to itself, so a padded query still has one key (its output is never used)."""
    T = real.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=real.device)
    return ((causal & real[:, None, :]) | eye)[:, None]


# -----------------------------------------------------------------------------
# the task's problems, completed by a model

def room_for(problem) -> int:
    """Room for the correct text plus slack for a wrong one that runs long."""
    return len(data.target(problem)) * 5 // 4 + 16


def generation_budget(model, problems, prompt_width: int) -> int:
    """New tokens to allow a batch: the longest problem's room, capped by the model's positions."""
    return min(max(room_for(problem) for problem in problems), model.config.block_size - prompt_width)


@torch.no_grad()
def complete(model, problems, temperature=0.0, batch_size=250, device="cpu", generator=None,
             fast=True, draft=True) -> list[str]:
    """The model's completion (text after the prompt) for each problem, in the order given.

    Problems are sorted by length before batching so that little compute goes to padding.
    draft: decode along the correct text (GPT.generate's free draft: the same texts, far less work);
    without it, fast: GPT.generate's optimized loop (same tokens), or the plain reference loop.
    """
    order = sorted(range(len(problems)), key=lambda i: data.sequence_length(problems[i]))
    completions = [None] * len(problems)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=f"generating {len(problems)}", leave=False, disable=len(problems) < LONG):
        chunk = order[start:start + batch_size]
        batch = [problems[i] for i in chunk]
        idx = data.prompt_batch(batch, device)
        out = model.generate(idx, generation_budget(model, batch, idx.size(1)), temperature=temperature,
                             stop=data.Stop, generator=generator, fast=fast,
                             draft=data.draft_batch(batch, device) if draft else None)
        for i, row in zip(chunk, out[:, idx.size(1):].tolist()):
            completions[i] = data.decode(row)
    return completions


def percent_correct(completions, problems) -> float:
    """Exact-match accuracy in percent of completions (texts after the prompt) for their problems."""
    return 100.0 * sum(data.reward(problem, c) for c, problem in zip(completions, problems)) / len(problems)


def accuracy(model, problems, temperature=0.0, **kwargs) -> float:
    """Exact-match accuracy in percent (greedy decoding by default)."""
    return percent_correct(complete(model, problems, temperature=temperature, **kwargs), problems)


@torch.no_grad()
def continue_from(model, problems, prefixes, device, dtype, temperature=0.0, generator=None, batch_size=256,
                  draft=True):
    """The completion prefix + the model's continuation of prompt + prefix (greedy, or sampled at
    `temperature` with `generator`), for each pair."""
    order = sorted(range(len(problems)), key=lambda i: len(prefixes[i]) - data.sequence_length(problems[i]))
    completions = [None] * len(problems)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch, heads = [problems[i] for i in chunk], [prefixes[i] for i in chunk]
        idx = data.prompt_batch(batch, device, prefixes=heads)
        room = min(max(room_for((a, b)) - len(h) for (a, b), h in zip(batch, heads)),
                   model.config.block_size - idx.size(1))
        with mixed_precision(device, dtype):
            out = model.generate(idx, max(1, room), temperature=temperature, generator=generator,
                                 stop=data.Stop,
                                 draft=data.draft_batch(batch, device, prefixes=heads) if draft else None)
        for i, head, row in zip(chunk, heads, out[:, idx.size(1):].tolist()):
            completions[i] = head + data.decode(row)
    return completions
