import sys, time, random, collections, math
sys.path.insert(0, ".")
import torch, data, generation
from model import load_checkpoint
torch.set_num_threads(1)
m = load_checkpoint("checkpoints/add7.pt")
rng = random.Random(5)
probs = [data.rl_problem(7, 1, rng) for _ in range(25)]
batch = [p for p in probs for _ in range(40)]
res = {}
for draft in (True, False):
    g = torch.Generator().manual_seed(11)
    t = time.time()
    texts = []
    for i in range(0, len(batch), 100):
        texts += generation.complete(m, batch[i:i+100], temperature=1.0, generator=g, draft=draft, batch_size=100)
    fe = [data.first_error(p, c) for p, c in zip(batch, texts)]
    rw = [data.reward(p, c) for p, c in zip(batch, texts)]
    res[draft] = (fe, rw)
    print("draft" if draft else "plain", "%.0fs" % (time.time() - t), "reward %.4f" % (sum(rw) / len(rw)),
          "never wrong %.4f" % (sum(f is None for f in fe) / len(fe)), flush=True)
# per problem reward counts and a chi-square on binned first-error positions
bins = lambda f: "none" if f is None else min(f // 50, 13)
ca = collections.Counter(bins(f) for f in res[True][0]); cb = collections.Counter(bins(f) for f in res[False][0])
keys = sorted(set(ca) | set(cb), key=str)
stat = sum((ca[k] - cb[k]) ** 2 / (ca[k] + cb[k]) for k in keys if ca[k] + cb[k] > 0)
print("first-error bins", [(k, ca[k], cb[k]) for k in keys])
print("two-sample chi-square", round(stat, 1), "df", len(keys) - 1)
ra, rb = sum(res[True][1]), sum(res[False][1]); n = len(batch)
p = (ra + rb) / (2 * n); z = (ra - rb) / n / math.sqrt(2 * p * (1 - p) / n)
print("reward difference z", round(z, 2))
