# Session 18, device call 1: float32 k-step chains (config.TF32_CHAIN: k-steps of S and dP chained in the
# tensor cores per float32 add; TF32_PV_CHAIN: the products over a streamed tile: P V, dV, dK, dQ).
# - one fp32_tensor_cores.py process per variant (VARIANTS="C,P ..."), N = 4096, head_dim 64 and 128, causal
#   and not, each against SDPA EFFICIENT in its own process, errors against float64; the processes compile side
#   by side and time (and check errors) one at a time under a lock;
# - compare_chains.py: the table, and the fastest variant whose error ratios all stay <= 0.9;
# - the float32 GPU tests (experiments/gpu_s18_f32_tests.txt) with that variant for the rest of the call
#   (NUMBA_FLASH_TF32_CHAIN / NUMBA_FLASH_TF32_PV_CHAIN), GPU profile, outputs poisoned.
# Run: bash .gpu/env.sh bash experiments/gpu_s18a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
START=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__); import numba_flash.tc_forward; \
from numba_flash import compile_speed; print('compile_speed patches in place:', compile_speed.install())" >> $OUT/gpu.txt 2>&1
L=/tmp/s18.lock; W=$OUT/runs; mkdir -p $W
for v in ${VARIANTS:-1,1 2,1 4,1 8,1 1,2 2,2 4,2 8,2}; do
  c=${v%,*}; p=${v#*,}
  timeout -s INT ${VAR_S:-360} python experiments/fp32_tensor_cores.py --defaults-only --no-math \
    ${SHAPES:---shape 4,32,4096,64 --shape 4,16,4096,128} --chain $c --pv-chain $p --lock $L --out $W/c${c}p${p} > $W/c${c}p${p}.log 2>&1 &
done
wait
python experiments/compare_chains.py $W --out $W/chains > $OUT/chains.log 2>&1
cat $OUT/chains.log
read -r _ C P < <(tail -1 $OUT/chains.log)
[[ "$C" =~ ^[0-9]+$ && "$P" =~ ^[0-9]+$ ]] || { C=1; P=1; }
C=${FORCE_C:-$C}; P=${FORCE_P:-$P}
REST=$(( ${CALL_S:-575} - ($(date +%s) - START) ))
echo "== float32 tests with chain $C, P V chain $P, $REST s left"
grep -v '^#' experiments/gpu_s18_f32_tests.txt > /tmp/tests.txt
[ "$REST" -lt 90 ] && : > /tmp/tests.txt  # too little time left for a test run to mean anything
IFS=$'\n'
[ -s /tmp/tests.txt ] && NUMBA_FLASH_TF32_CHAIN=$C NUMBA_FLASH_TF32_PV_CHAIN=$P HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 \
  timeout -s INT $REST python -m pytest -v -p no:cacheprovider -p no:randomly -n ${WORKERS:-14} --tb=short -rf --junitxml=$OUT/junit.xml \
  --durations=20 $(cat /tmp/tests.txt) > $OUT/tests.log 2>&1
unset IFS
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
for f in $W/*.log; do echo "== $f"; grep -E "chains|error|Error|Traceback" $f | cut -c1-200 | head -20; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
tail -2 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20
grep -E "^E " $OUT/tests.log | head -30
cd $OUT && tar czf runs.tgz runs && rm -rf runs
