# Session 15, device call 2, side by side:
# - the whole test suite with the GPU Hypothesis profile, outputs poisoned (test_tc's float32 tests ran in call 1
#   and run again here after the fixes), spread over 10 processes, cut at TEST_S seconds (what did not run is
#   listed from the junit file);
# - float32 (3xTF32) at head_dim 128: the dK/dV kernel spilled 176 bytes of stack with this image's CUDA 13.0
#   toolchain (call 1's compile test; CI's 13.5 wheels: none). Compile reports of it in both product orders
#   (tc_backward.TF32_DV_FIRST_MAX_D 64, the default, and 128: dV's products first), then forward+backward of each
#   against SDPA EFFICIENT (atomic_dq.py --dtype float32, 3 interleaved rounds), errors vs float64 beside SDPA's.
# Run: bash .gpu/env.sh bash experiments/gpu_s15b.sh   ($OUT: the device tool's output folder)
# (A record of the call as it ran: TF32_DV_FIRST_MAX_D was removed after it, dV first being the only order now.)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__)" >> $OUT/gpu.txt 2>&1
L=/tmp/s15b.lock; W=/tmp/s15b; mkdir -p $W
for d in 64 128; do
  timeout -s INT ${TIME_S:-520} python -c "
import sys, runpy
import numba_flash.tc_backward as tb
tb.TF32_DV_FIRST_MAX_D = $d
from numba_flash.config import TensorCoreConfig
from numba_flash.resources import tc_compile_report
r = tc_compile_report(TensorCoreConfig(64, 16, 2, 16), 128, False, False, 'tf32', kernel='dkdv')
print('compile report, dV first up to head_dim $d:', {k: r[k] for k in ('registers', 'stack', 'spill_stores', 'spill_loads', 'mma')}, flush=True)
sys.argv = ['atomic_dq.py', '--dtype', 'float32', '--shape', '4,16,4096,128', '--causal', 'both', '--default-only',
            '--repeat', '10', '--interleave', '3', '--lock', '$L', '--out', '$W/f32-128-dvfirst$d']
runpy.run_path('experiments/atomic_dq.py', run_name='__main__')
" > $W/f32-128-dvfirst$d.log 2>&1 &
done
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-540} python -m pytest -p no:cacheprovider \
  -p no:randomly -n 10 --tb=short -rf --junitxml=$OUT/junit.xml --durations=25 tests > $OUT/tests.log 2>&1 &
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/s15b.tgz -C $W .
for f in $W/*.log; do echo "== $f"; grep -E "compile report|causal=|numba_flash|sdpa|errors|Error|error" $f | cut -c1-250; done
tail -3 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20
grep -E "^E " $OUT/tests.log | head -20
