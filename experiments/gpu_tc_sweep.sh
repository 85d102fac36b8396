timeout -s INT 420 python experiments/tc_sweep.py --out $OUT/tc_sweep 2>&1 | tail -40
