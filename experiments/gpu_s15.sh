# Session 15, device call 1: the float32 (3xTF32) dK/dV kernel's two-level sums at head_dim <= 64
# (config.TF32_SUMS_KSTEPS), measured against SDPA's EFFICIENT backend and against the kernel before it
# (OLD=folder with the previous commit's numba_flash), everything side by side, one timing lock:
# - forward+backward and backward, float32, N = 4096, head_dim 64, causal and not: the new default, the old
#   one (same script, the old package), and two other backward configs (64,32,2,16,b3 and 128,32,2,16),
#   each process interleaving its kernels with SDPA in 3 rounds; errors against float64 beside SDPA's;
# - tests with the GPU profile, outputs poisoned: test_tc's float32 tests (oracle at odd sizes, the new
#   two-level-sum test, agreement with the portable kernels, the sm_90 compile checks with the GPU image's
#   toolchain).
# Run: OLD=old bash .gpu/env.sh bash experiments/gpu_s15.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__)" >> $OUT/gpu.txt 2>&1
L=/tmp/s15.lock; W=/tmp/s15; mkdir -p $W
T=${TIME_S:-520}
A="--dtype float32 --shape 4,32,4096,64 --repeat 10 --interleave 3 --lock $L"
for c in no yes; do
  timeout -s INT $T python experiments/atomic_dq.py $A --causal $c --default-only --out $W/new-$c > $W/new-$c.log 2>&1 &
  if [ -n "$OLD" ]; then
    timeout -s INT $T python $OLD/experiments/atomic_dq.py $A --causal $c --default-only --out $W/old-$c \
      > $W/old-$c.log 2>&1 &
  fi
done
timeout -s INT $T python experiments/atomic_dq.py $A --causal no --bwd-config 64,32,2,16,b3 --skip-default \
  --out $W/b3-no > $W/b3-no.log 2>&1 &
timeout -s INT $T python experiments/atomic_dq.py $A --causal no --bwd-config 128,32,2,16 --skip-default \
  --out $W/w8-no > $W/w8-no.log 2>&1 &
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-530} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 6 --tb=short -rf tests/test_tc.py -k "float32" > $OUT/tests.log 2>&1 &
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/s15.tgz -C $W .
for f in $W/*.log; do echo "== $f"; grep -E "causal=|numba_flash|sdpa|errors|Error|error" $f | cut -c1-230; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head
grep -E "^E " $OUT/tests.log | head -20
