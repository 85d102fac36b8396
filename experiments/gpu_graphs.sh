# Device call 6: the host-time breakdown with CUDA-graph replays of the adapter and SDPA, then the
# CUDA-graph capture test and the launch-mode test.
set -x
export PYTHONUNBUFFERED=1
timeout -s INT 200 python experiments/torch_overhead_breakdown.py --out $OUT/breakdown > $OUT/breakdown.log 2>&1; tail -24 $OUT/breakdown.log
NUMBA_FLASH_POISON=1 timeout -s INT 200 python -m pytest -v -p no:cacheprovider -n 2 -rfs tests/test_torch.py::test_captured_in_a_cuda_graph tests/test_plan.py::test_gpu_launch_modes_give_identical_results > $OUT/tests.log 2>&1; tail -8 $OUT/tests.log
