"""What dropout masks cost the fused step on the cpu backend at ctgan's shape (docs/DESIGN.md
section 4): MLPDiscriminator(200, (256, 256), pack=10), 500 samples per side, WGAN-GP,
backward=True, fp32, 1 thread; dropout 0.5 vs 0 vs the torch closed form and the reference path,
interleaved, medians. Run: python benchmarks/dropout_cost.py"""
import time, statistics, torch, fastgan
torch.set_num_threads(1)
torch.manual_seed(0)
def make(p):
    torch.manual_seed(0)
    return fastgan.MLPDiscriminator(200, (256, 256), pack=10, dropout=p)
real, fake = torch.randn(500, 200), torch.randn(500, 200)
cfgs = {"cpu p=0": (make(0.0), "cpu"), "cpu p=0.5": (make(0.5), "cpu"), "torch p=0.5": (make(0.5), "torch"),
        "reference p=0.5": (make(0.5), "reference")}
pen = fastgan.GradientPenalty()
g = torch.Generator().manual_seed(1)
times = {k: [] for k in cfgs}
D5 = make(0.5)
from fastgan.mlp import dropout_masks
mt, mf, mb = [], [], []


def float_masks(D, rows, generator):  # the previous draw: one float32 uniform per decision
    keep = 1.0 - D.dropout
    u = torch.rand(rows * sum(D.hidden), generator=generator)
    return list((u < keep).to(torch.float32).div_(keep).split([rows * w for w in D.hidden]))


def bernoulli_masks(D, rows, generator):  # the earlier draw (F.dropout's bits): the baseline
    keep = 1.0 - D.dropout
    return [torch.empty(rows, w).bernoulli_(keep, generator=generator).div_(keep) for w in D.hidden]


for it in range(60):
    for k, (D, b) in cfgs.items():
        t = time.perf_counter()
        fastgan.discriminator_step(D, real, fake, loss="wasserstein", penalty=pen, backend=b, generator=g, backward=True)
        times[k].append(time.perf_counter() - t)
        D.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for rows in (50, 50, 50):
        dropout_masks(D5, rows, like=real, generator=g)
    mt.append(time.perf_counter() - t)
    t = time.perf_counter()
    for rows in (50, 50, 50):
        float_masks(D5, rows, g)
    mf.append(time.perf_counter() - t)
    t = time.perf_counter()
    for rows in (50, 50, 50):
        bernoulli_masks(D5, rows, g)
    mb.append(time.perf_counter() - t)
for k, v in times.items():
    print(f"{k:18s} median {statistics.median(v[3:])*1e3:.3f} ms")
print(f"mask draws alone (3 passes x 2 layers, 50x256; random bits, p = 0.5) median {statistics.median(mt[3:])*1e3:.3f} ms")
print(f"the same draws from one float32 rand per pass (the previous draw; p not a multiple of 2^-k) median "
      f"{statistics.median(mf[3:])*1e3:.3f} ms")
print(f"the same draws by bernoulli_ per layer (the earlier draw) median {statistics.median(mb[3:])*1e3:.3f} ms")
