"""The machinery behind the five scripts, which a first reading of the method may skip: the fast (KV-cache
and draft) sampling path, run folders with their locks and atomic files, device/precision/threads/seeds,
torchrun ranks, evaluation and logging, the statistics and tables that compare runs, and the benchmark."""
