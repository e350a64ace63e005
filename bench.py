"""
How fast is generation with the KV cache, against recomputing the whole prefix for every new token
(how the official implementation generates)? Same model, same batch, same length, one run.
Also: training throughput of the teacher-forced forward + backward pass that RL and pre-training use.

    python bench.py                         # checkpoints/add7.pt on (N+1)-digit problems
    python bench.py --batch-size 64 --device cuda
"""
import argparse
import sys
import time

import torch

import data
from model import CheckpointError, load_checkpoint
from pretrain import autocast_dtype, mixed_precision, pick_device


@torch.no_grad()
def generate_by_recomputing(model, idx, steps):
    """Greedy decoding that runs the full sequence through the model for every new token."""
    for _ in range(steps):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return idx


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="checkpoints/add7.pt", help="model to time")
    p.add_argument("--digits", type=int, default=None, help="K for the K+K problems (default N+1)")
    p.add_argument("--batch-size", type=int, default=16, help="rows generated at once (default 16)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.digits is not None and args.digits < 1):
        p.error("--batch-size and --digits must be at least 1")
    device = pick_device(args.device)
    dtype = autocast_dtype("auto", device)
    try:
        model, meta = load_checkpoint(args.ckpt, device, with_meta=True)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    k = args.digits or meta.get("args", {}).get("digits", 7) + 1
    problems = data.eval_set("identical", k, args.batch_size)
    prompts = data.prompt_batch(problems, device)
    steps = max(len(data.scratchpad(a, b)) for a, b in problems)
    if prompts.size(1) + steps > model.config.block_size:
        sys.exit(f"error: {k}-digit problems do not fit in the model's {model.config.block_size} positions")
    print(f"{args.ckpt} on {device} | {k}+{k} problems | batch {args.batch_size} | {steps} new tokens per row")

    with mixed_precision(device, dtype):
        model.generate(prompts[:2], 8, temperature=0)  # warm-up
        cached, t_cache = timed(lambda: model.generate(prompts, steps, temperature=0), device)
        new = cached.size(1) - prompts.size(1)  # rows stop after their answer line: time the same count
        recomputed, t_full = timed(lambda: generate_by_recomputing(model, prompts, new), device)
    tokens = args.batch_size * new
    print(f"generation, KV cache:         {tokens / t_cache:10.0f} tokens/s ({t_cache:.1f} s)")
    print(f"generation, full recompute:   {tokens / t_full:10.0f} tokens/s ({t_full:.1f} s)")
    # rows that finished early are padded in the cached output; up to there both should decode the same
    # tokens (in bfloat16 the two paths round differently, which can flip a near-tie and the rest of a row)
    finished = cached[:, prompts.size(1):] == data.PAD_ID
    agree = ((cached[:, prompts.size(1):] == recomputed[:, prompts.size(1):]) | finished).all(1)
    print(f"rows decoded identically by both: {int(agree.sum())} of {args.batch_size}")

    model.train()
    x, y = data.make_batch(problems, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the work of a step, without changing the model

    def train_step():
        with mixed_precision(device, dtype):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()
    _, t_train = timed(lambda: [train_step() for _ in range(3)], device)
    print(f"training, forward + backward: {3 * x.numel() / t_train:10.0f} tokens/s")
    print(f"kv-cache speedup: {t_full / t_cache:.1f}x")


if __name__ == "__main__":
    main()
