timeout -s INT 330 python experiments/tc_sweep.py --out $OUT/tc_sweep 2>&1 | grep -v "^{" | tail -30
