# Device call 3: in one process (the tensor-core kernels compile once, ~30 s each): a correctness
# smoke check of the changed adapter against SDPA's math backend, the host-time experiments, then
# the tiny-GPT training comparison with the faster adapter. (Rewritten after the run to use
# experiments/in_one_process.py; the run inlined the same loader.)
set -x
timeout -s INT 560 python - > $OUT/run.log 2>&1 <<'PY'
import os, sys
sys.path.insert(0, "experiments")
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import numba_flash.torch as nft
from in_one_process import main as run_all
out = os.environ["OUT"]
q, k, v, do = (torch.randn(2, 3, 200, 64, device="cuda", dtype=torch.float16) for _ in range(4))
leaves = [x.clone().requires_grad_() for x in (q, k, v)]
got = [nft.scaled_dot_product_attention(*leaves, is_causal=True)]
got += torch.autograd.grad(got[0], leaves, do)
l64 = [x.double().requires_grad_() for x in (q, k, v)]
with sdpa_kernel(SDPBackend.MATH):
    ref = [torch.nn.functional.scaled_dot_product_attention(*l64, is_causal=True)]
ref += torch.autograd.grad(ref[0], l64, do.double())
print("smoke max abs err out,dq,dk,dv:", [float((a.double() - b).abs().max()) for a, b in zip(got, ref)], flush=True)
run_all([f"torch_overhead --out {out}/overhead", f"torch_overhead_breakdown --out {out}/breakdown",
         f"host_profile > {out}/host_profile.txt", f"train_tiny_gpt --out {out}/train --max-minutes 1.6"])
PY
grep -v "^sdpa\|^numba_flash \|━" $OUT/run.log | tail -60; grep -E "us per|of which" $OUT/host_profile.txt
