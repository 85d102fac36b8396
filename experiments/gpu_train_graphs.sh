# Device call 5 (session 6): the tiny GPT under CUDA graphs (sdpa, numba_flash, sdpa_noise, each
# forward + loss + backward replayed from a graph), then the float32 forward's compile test with the
# GPU image's toolchain.
set -x
export PYTHONUNBUFFERED=1
timeout -s INT 330 python experiments/train_tiny_gpt.py --cuda-graphs --out $OUT/train_graphs --max-minutes 1.2 > $OUT/train.log 2>&1
tail -30 $OUT/train.log
timeout -s INT 200 python -m pytest -q -p no:cacheprovider -rfs tests/test_tc.py -k "float32_tensor_core_forward_compiles" > $OUT/compile.log 2>&1
tail -5 $OUT/compile.log
