"""
A small GPT in plain PyTorch, read bottom-up: attention -> MLP -> Block -> GPTConfig -> GPT.

Pre-LN blocks, learned absolute positions and tied input/output embeddings, as in GPT-2.
Two things differ from nanoGPT because RL fine-tuning needs them:
  - forward() returns logits at every position (per-token log-probs for the policy gradient);
  - generate() is batched, accepts left-padded prompts of different lengths, keeps a KV cache,
    and stops each row once its answer line is complete (lab/generation.py); sample_plainly is nanoGPT's
    plain loop, a prompt at a time, for reading.
Padding (token id 0 of data.VOCAB) never influences a real token: padded keys are masked out.
Checkpoints (at the end): save_checkpoint, load_checkpoint, and for the scripts load_or_exit,
pretrain_digits and load_for_fine_tuning (the policy and its frozen reference), each refusing in one line.
"""
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

import data
from lab import generation
from data import PAD_ID, VOCAB
from lab.files import atomic_save
from lab.runtime import too_big

NEVER = -1e4  # the padding token's logit: probability e^-10000 = 0, and 0 * log p stays finite


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, mask=None, cache=None, start=0):
        """mask: None for plain causal attention, else a bool (B, 1, T, S) tensor, True = may attend.
        cache: this layer's preallocated (k, v) buffers; the new keys/values go to [start, start + T)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            cache_k, cache_v = cache
            cache_k[:, :, start:start + T] = k
            cache_v[:, :, start:start + T] = v
            keys = start + T if mask is None else mask.size(-1)  # a mask may cover columns not yet written
            k, v = cache_k[:, :, :keys], cache_v[:, :, :keys]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, cache=None, start=0):
        x = x + self.attn(self.ln_1(x), mask, cache, start)
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence (positions); 10+10-digit problems need 865
    vocab_size: int = len(VOCAB)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        # padding is never a next token: its logit is pushed to NEVER in every output (sampling, loss,
        # certainty and KL all see the same distribution); finite, so that 0 * log p stays 0
        self.register_buffer("pad_logit", F.one_hot(torch.tensor(PAD_ID), config.vocab_size) * NEVER,
                             persistent=False)
        self.apply(self._init_weights)
        with torch.no_grad():  # learned positions, but started as sinusoids: see _sinusoids
            self.wpe.weight.copy_(_sinusoids(config.block_size, config.n_embd, scale=0.05))
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def _check_length(self, positions):
        longest = int(positions.max()) + 1
        if longest > self.config.block_size:
            raise ValueError(f"sequence needs position {longest - 1} but the model has block_size "
                             f"{self.config.block_size}; use fewer digits or a model with a larger "
                             f"--block-size")

    def _forward_cached(self, idx, positions, mask=None, caches=None, start=0):
        x = self.wte(idx) + self.wpe(positions)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if caches is None else caches[i], start)
        # the last layer in float32 even under autocast: log-probs, the KL and the certainty are taken from
        # these logits, and bfloat16 would round them to about 1%
        with torch.autocast(idx.device.type, enabled=False):
            return self.lm_head(self.ln_f(x).float()) + self.pad_logit

    def forward(self, idx, targets=None, offset=None):
        """idx (B, T) token ids, right- or left-padded. Returns (logits (B, T, V), loss or None).

        targets (B, T): next tokens, -1 where ignored; the loss is their mean cross-entropy.
        offset (B,): added to every row's positions. Pre-training draws it at random so that every
        position embedding is trained, not only those that the longest training problem reaches.
        """
        real = idx != PAD_ID
        if real[:, 0].all():  # no left padding: plain causal attention, the fast path
            positions = torch.arange(idx.size(1), device=idx.device).expand_as(idx)
            mask = None
        else:  # left padding: each row counts positions from its first real token, pads are never keys
            positions = (real.cumsum(1) - 1).clamp(min=0)
            mask = generation.causal_mask(real)
        if offset is not None:
            positions = positions + offset[:, None]
        self._check_length(positions)
        # float32 on a CPU without gradient: a few rows at a time (PASS_TOKENS_CPU; bfloat16 gained nothing)
        if idx.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
            rows = max(1, generation.PASS_TOKENS_CPU // idx.size(1))
            logits = torch.cat([self._forward_cached(idx[i:i + rows], positions[i:i + rows],
                                                     None if mask is None else mask[i:i + rows])
                                for i in range(0, idx.size(0), rows)])
        else:
            logits = self._forward_cached(idx, positions, mask)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def sample_plainly(self, prompts, max_new_tokens, temperature=1.0, generator=None, stop=None):
        """nanoGPT's generation loop, one prompt at a time: the whole text goes through the model again for
        every new token, drawn from softmax(logits / temperature) (greedy at 0), until the task's stop rule
        (data.Stop) says the text is finished. Left-padded prompts (B, T) in, (B, T + new) out, as
        `generate`, which computes the same with a KV cache and a draft, far faster (tests/test_model.py,
        test_the_plain_loop_writes_what_generate_does)."""
        written = []
        for prompt in prompts:
            idx = prompt[prompt != PAD_ID][None]  # this prompt alone, without padding
            finished = stop(1, idx.device) if stop else None
            for _ in range(max_new_tokens):
                logits, _ = self(idx)
                logits = logits[:, -1].float()
                if temperature == 0:
                    token = logits.argmax(-1, keepdim=True)
                else:
                    token = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)
                idx = torch.cat([idx, token], dim=1)
                if finished is not None and finished(token[:, 0]).all():
                    break
            written.append(idx[0, (prompt != PAD_ID).sum():])
        new = nn.utils.rnn.pad_sequence(written, batch_first=True, padding_value=PAD_ID)
        return torch.cat([prompts, new], 1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, generator=None, fast=True, stop=None,
                 check_every=None, draft=None):
        """Continue left-padded prompts idx (B, T): generation.generate (greedy for temperature 0, a stop
        rule, a draft of the correct text); returns (B, T + new tokens)."""
        return generation.generate(self, idx, max_new_tokens, temperature, generator, fast, stop, check_every,
                                   draft)


def _sinusoids(length, width, scale):
    """Transformer sinusoids (Vaswani et al. 2017) as the starting value of the learned positions.
    Between any two positions t and t - k they differ by the same rotation, so an attention head can
    learn 'look k tokens back' once for all t; from a random start the model must learn it anew at every
    position, and copying digits (the bulk of the scratchpad) appeared much later in our trials."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2, dtype=torch.float32) / width)
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, :width // 2]
    return scale * table


# -----------------------------------------------------------------------------
# checkpoints: config, vocabulary and weights in one file, written atomically

class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(path, model, **meta):
    """meta: plain Python values (numbers, strings, lists, dicts) worth keeping, e.g. the command line; the
    task it was trained on (data.NAME) unless meta says otherwise, so another task's code refuses it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    meta = {"task": data.NAME, **meta}
    atomic_save({"config": asdict(model.config), "vocab": VOCAB, "model": state, "meta": meta}, path)


def load_checkpoint(path, device="cpu", with_meta=False):
    """The model in eval mode (and its meta dict if with_meta). Raises CheckpointError with one line."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: train one with pretrain.py or pass --ckpt")
    if not os.path.isfile(path):  # reading a FIFO or a device would wait or read forever
        raise CheckpointError(f"{path} is not a regular file (a folder, a FIFO or a device): pass a "
                              "checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                              "it may be damaged: re-create it with pretrain.py") from None
    if not isinstance(ckpt, dict) or not {"config", "vocab", "model"} <= ckpt.keys():
        raise CheckpointError(f"{path} is not a checkpoint of this project (missing config, vocab or model)")
    if not isinstance(ckpt.get("meta") or {}, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (its meta is not a dict)")
    ckpt["meta"] = ckpt.get("meta") or {}
    task = ckpt["meta"].get("task", "addition")  # made before tasks were recorded: all addition
    if task != data.NAME:
        raise CheckpointError(f"{path} was trained on the task {task!r} but this code's task (data.NAME) is "
                              f"{data.NAME!r}: pre-train a model of this task with pretrain.py")
    if ckpt["vocab"] != VOCAB:
        size = f"{len(ckpt['vocab'])} tokens" if isinstance(ckpt["vocab"], (list, str)) else "not a list"
        raise CheckpointError(f"{path} was made with another vocabulary ({size}, this code has "
                              f"{len(VOCAB)} tokens): re-train it with this version of pretrain.py")
    sizes = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    if any(not isinstance(v, int) or not 1 <= v <= 1 << 20 for v in sizes.values()):  # before any allocation
        raise CheckpointError(f"{path} is damaged: its config holds sizes outside 1..{1 << 20} ({sizes})")
    try:
        model = GPT(GPTConfig(**ckpt["config"]))
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
        if set(missing) != {"lm_head.weight"} or unexpected:  # lm_head.weight is tied to wte.weight
            raise RuntimeError(f"missing {missing}, unexpected {unexpected}")
    except (TypeError, RuntimeError, ValueError) as e:  # ValueError: e.g. n_embd not divisible by n_head
        raise CheckpointError(f"{path} does not match this model code: "
                              f"{(str(e) or type(e).__name__).splitlines()[0]}") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise CheckpointError(f"{path} holds weights that are not finite (NaN or infinity): it is damaged or "
                              "its training diverged; re-create it with pretrain.py")
    model.to(device).eval()
    return (model, ckpt["meta"]) if with_meta else model


def load_or_exit(path, device):
    """load_checkpoint with its meta for a script: a checkpoint that cannot be used ends it in one line."""
    try:
        return load_checkpoint(path, device, with_meta=True)
    except CheckpointError as e:
        sys.exit(f"error: {e}")


MOST_DIGITS = 100  # more than any model here can hold (10+10 digits need 865 positions)


def pretrain_digits(meta, path):
    """N, the pre-training digits a checkpoint records (pretrain.py's --digits); one line if it has none
    that makes sense."""
    try:
        n = meta["args"]["digits"]
    except (KeyError, TypeError):
        n = None
    if not isinstance(n, int) or isinstance(n, bool):
        sys.exit(f"error: {path} records no pre-training digits; pass a checkpoint made by pretrain.py")
    if not 1 <= n <= MOST_DIGITS:
        sys.exit(f"error: {path} records {n} pre-training digits, outside 1..{MOST_DIGITS}: it is damaged or "
                 "not made by pretrain.py")
    return n


def load_for_fine_tuning(path, device, digits_plus, rows):
    """The policy (to train) and the frozen reference, both from the checkpoint at `path`, its N (pre-training
    digits) and meta; exits with one line if it cannot serve RL on N+digits_plus digits with `rows`
    completions a step (positions, memory)."""
    policy, meta = load_or_exit(path, device)
    reference = load_checkpoint(path, device)
    n = pretrain_digits(meta, path)
    longest = data.longest_sequence(n + digits_plus)
    if longest > policy.config.block_size:
        fix = ("lower --digits-plus" if digits_plus > 1 else
               f"pre-train a model with more positions (pretrain.py --block-size {longest} or more)")
        sys.exit(f"error: {n + digits_plus}-digit problems need {longest} positions but {path} has "
                 f"{policy.config.block_size}; {fix}")
    if message := too_big(policy.config, rows, longest, device):
        sys.exit(f"error: {message}; lower --batch-size or --group-size")
    reference.requires_grad_(False)
    return policy, reference, n, meta
