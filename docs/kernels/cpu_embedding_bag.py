"""The embedding_bag provider against the plain torch version issue 18 names (a sign hash and
F.embedding_bag with per-sample weights, ten lines) and the dense layer, on this CPU.

python docs/kernels/cpu_embedding_bag.py   -- d = h = 512, s = 8192, float32 forward, torch.utils.benchmark
medians in one process; the parts of the provider's time after the totals."""
import torch
import torch.nn.functional as F
from torch.utils import benchmark

from mfbench.bench.cases import Case
from mfbench.bench.subject import make_layer
from mfbench.core import providers
from mfbench.core.lookup import bucket_weight, sign_hash, split_chunks

S, D, TAU = 8192, 512, 8
torch.manual_seed(0)
layer = make_layer(Case("forward", S, D, D), "embedding_bag", torch.device("cpu"), torch.float32)
x, w = torch.randn(S, D), torch.randn(D, D)
K, ROWS, H = layer.tables.shape
flat = layer.tables.reshape(K * ROWS, H)
powers = 2 ** torch.arange(TAU)
offsets = torch.arange(K) * ROWS


def plain(x):
    """The plain version: int64 sign hash, sigmoid weights, F.embedding_bag."""
    z = x.view(S, K, TAU)
    idx = ((z >= 0).long() * powers).sum(-1) + offsets
    p = torch.sigmoid(2 * z.abs()).prod(-1)
    return F.embedding_bag(idx, flat, per_sample_weights=p, mode="sum")


provider = providers.get("embedding_bag").fn
z = split_chunks(x, TAU)
idx32 = sign_hash(z, torch.int32) + offsets.int()
p = bucket_weight(z)
with torch.no_grad():
    ref = provider(layer, x)
    assert float((plain(x) - ref).norm() / ref.norm()) < 1e-6
    for name, fn in [("dense x @ W", lambda: x @ w), ("embedding_bag provider", lambda: provider(layer, x)),
                     ("plain torch version", lambda: plain(x)), ("  provider's hash", lambda: sign_hash(z, torch.int32)),
                     ("  provider's weights", lambda: bucket_weight(z)),
                     ("  provider's bag (int32)", lambda: F.embedding_bag(idx32, flat, per_sample_weights=p, mode="sum"))]:
        t = benchmark.Timer("f()", globals={"f": fn}).blocked_autorange(min_run_time=2)
        print(f"{name:26} {t.median * 1e3:8.1f} ms")
