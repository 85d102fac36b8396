# Session 19, device call 2, with the float32 chains' new defaults (config.TF32_CHAIN = TF32_PV_CHAIN = 2):
# - compile reports of the float32 (3xTF32) kernels on the GPU image's CUDA 13.0 (the compile tests, with
#   NUMBA_FLASH_COMPILE_REPORTS: every report is written before the tests check their bounds), 3 processes;
# - the float32 Hypothesis tests call 1 left unfinished, then the GPU tests no run reached since session 17
#   (experiments/gpu_s19_f32_tests.txt; TESTS=file for another order file), GPU profile, outputs
#   poisoned, WORKERS processes, TEST_S seconds.
# Run: bash .gpu/env.sh bash experiments/gpu_s19a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
. experiments/gpu_parts.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__); from numba_flash import config; \
print('chains', config.TF32_CHAIN, config.TF32_PV_CHAIN)" >> $OUT/gpu.txt 2>&1
NUMBA_FLASH_COMPILE_REPORTS=$OUT/compile_gpu.jsonl timeout -s INT ${TEST_S:-540} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 3 --tb=short -rf tests/test_tc.py -k "float32_tensor_core_backward_compiles or \
float32_tensor_core_forward_compiles or chains_leave" > $OUT/compile.log 2>&1 &
gpu_tests ${TESTS:-experiments/gpu_s19_f32_tests.txt} ${TEST_S:-540} ${WORKERS:-10}
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
echo "== compile"; grep -E "PASSED|FAILED|^E " $OUT/compile.log | cut -c1-250 | head -20; cat $OUT/compile_gpu.jsonl
report_tests
