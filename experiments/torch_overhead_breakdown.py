"""Where the adapter's host time goes, on a tiny problem (1, 1, 128, 64) fp16 causal, GPU + torch.

Microseconds per call (wall clock, 200 calls, one synchronisation): the CuPy API directly; the same
calls wrapped in numba_flash.torch's _Bridge (torch-owned outputs, torch's stream) in the main
thread; the full adapter (autograd.Function); and the bridged backward in a fresh thread each
call, against the cost of starting a thread alone (PyTorch runs backward functions in its
autograd engine's own thread).

    bash .gpu/env.sh python experiments/torch_overhead_breakdown.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import time, threading, torch, cupy
import numba_flash as nf
from numba_flash import api
from numba_flash.torch import scaled_dot_product_attention as f, _Bridge
q,k,v,do = (torch.randn(1,1,128,64, device='cuda', dtype=torch.float16) for _ in range(4))
leaves=[t.clone().requires_grad_() for t in (q,k,v)]
def t(fn, n=200):
    for _ in range(3): fn()
    torch.cuda.synchronize(); t0=time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter()-t0)/n*1e6
out, lse = None, None
def fwd_bridge():
    global out, lse
    with _Bridge(q.device) as br:
        o, l = api.flash_attention(br.to_view(q), br.to_view(k), br.to_view(v), causal=True, return_lse=True)
        out, lse = br.to_torch(o), br.to_torch(l)
fwd_bridge()
def bwd_bridge():
    with _Bridge(q.device) as br:
        g = api.flash_attention_backward(br.to_view(do), br.to_view(q), br.to_view(k), br.to_view(v), br.to_view(out), br.to_view(lse), causal=True)
        [br.to_torch(x) for x in g]
cq,ck,cv,cdo = (cupy.from_dlpack(x) for x in (q,k,v,do))
co, cl = nf.flash_attention(cq,ck,cv,causal=True,return_lse=True)
res = {}
res['direct_bwd'] = t(lambda: nf.flash_attention_backward(cdo,cq,ck,cv,co,cl,causal=True))
res['bridge_bwd_main_thread'] = t(bwd_bridge)
res['bridge_fwd_main_thread'] = t(fwd_bridge)
res['adapter_fwd'] = t(lambda: f(q,k,v,is_causal=True))
res['adapter_fwd_bwd'] = t(lambda: torch.autograd.grad(f(*leaves,is_causal=True), leaves, do))
def other_thread():
    th = threading.Thread(target=bwd_bridge); th.start(); th.join()
res['bridge_bwd_new_thread_each_call'] = t(other_thread, 50)
res['thread_start_join_only'] = t(lambda: (lambda th: (th.start(), th.join()))(threading.Thread(target=lambda: None)), 50)
for k_,v_ in res.items(): print(f"{k_:35s} {v_:9.1f} us")
