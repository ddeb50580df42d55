"""Ad-hoc probe (not shipped): where the time of a call at a never-seen shape goes."""
import random, sys, time
import torch
from anchordetr_trt.compiled import compile
from anchordetr_trt.weights import random_model
from anchordetr_trt.bench.stream import _inputs

out = sys.argv[1]
model = random_model("r50-dc5")
t = time.perf_counter()
m = compile(model, backend="inductor", device="cuda", cache_dir=".cache/probe",
            min_shape=(1, 320, 320), opt_shape=(8, 800, 1216), max_shape=(8, 1344, 1344))
print("compile", time.perf_counter() - t, flush=True)
rng = random.Random(3)
def shape():
    return (rng.randint(1, 8), 32 * rng.randint(10, 42), 32 * rng.randint(10, 42))
rows = []
for i in range(40):
    s = shape(); x = _inputs(s, "cuda", m.dtype); torch.cuda.synchronize()
    t = time.perf_counter(); m(*x); torch.cuda.synchronize(); a = time.perf_counter() - t
    t = time.perf_counter(); m.runner._call_padded(*x); torch.cuda.synchronize(); b = time.perf_counter() - t
    rows.append((s, a, b)); print(s, f"new {a*1e3:.1f} ms, again uncaptured {b*1e3:.1f} ms", flush=True)
import statistics
print("median new", statistics.median(r[1] for r in rows)*1e3, "again", statistics.median(r[2] for r in rows)*1e3)
from torch.profiler import profile, ProfilerActivity
s = shape(); x = _inputs(s, "cuda", m.dtype); torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    m(*x); torch.cuda.synchronize()
txt = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
print(txt)
open(out + "/probe_profile.txt", "w").write(txt)
# same shape, cudnn benchmark on vs off: does the plan cache miss dominate?
with profile(activities=[ProfilerActivity.CPU]) as p:
    m.runner._call_padded(*x); torch.cuda.synchronize()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
