# Device call 3: in one process (the tensor-core kernels compile once, ~30 s each): a correctness
# smoke check of the changed adapter against SDPA's math backend, the host-time experiments, then
# the tiny-GPT training comparison with the faster adapter.
set -x
timeout -s INT 560 python - > $OUT/run.log 2>&1 <<'PY'
import importlib.util, os, sys, time
sys.path.insert(0, "experiments")
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import numba_flash.torch as nft
def load(name):
    spec = importlib.util.spec_from_file_location(name, f"experiments/{name}.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
out = os.environ["OUT"]
t = time.time()
q, k, v, do = (torch.randn(2, 3, 200, 64, device="cuda", dtype=torch.float16) for _ in range(4))
leaves = [x.clone().requires_grad_() for x in (q, k, v)]
got = [nft.scaled_dot_product_attention(*leaves, is_causal=True)]
got += torch.autograd.grad(got[0], leaves, do)
l64 = [x.double().requires_grad_() for x in (q, k, v)]
with sdpa_kernel(SDPBackend.MATH):
    ref = [torch.nn.functional.scaled_dot_product_attention(*l64, is_causal=True)]
ref += torch.autograd.grad(ref[0], l64, do.double())
print("smoke max abs err out,dq,dk,dv:", [float((a.double() - b).abs().max()) for a, b in zip(got, ref)], flush=True)
load("torch_overhead").main(["--out", f"{out}/overhead"]); print("overhead done", time.time() - t, flush=True)
load("torch_overhead_breakdown").main(["--out", f"{out}/breakdown"]); print("breakdown done", time.time() - t, flush=True)
with open(f"{out}/host_profile.txt", "w") as f:
    old, sys.stdout = sys.stdout, f
    try:
        load("host_profile").main()
    finally:
        sys.stdout = old
print("profile done", time.time() - t, flush=True)
load("train_tiny_gpt").main(["--out", f"{out}/train", "--max-minutes", "1.6"])
print("train done", time.time() - t, flush=True)
PY
grep -v "^sdpa\|^numba_flash \|━" $OUT/run.log | tail -60; grep -E "us per|of which" $OUT/host_profile.txt
