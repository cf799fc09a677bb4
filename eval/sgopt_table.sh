#!/bin/bash
# The SG-OPT table at cpu scale (WORKSPACE, "SG-OPT"): MiniLM's [CLS] and mean pooling before
# training, then SG-OPT and plain SG (`configs/sgopt.py:cpu`, `:sg_cpu`) with three seeds each;
# then `python eval/sgopt_table.py --runs=DIR`. Restartable: a finished run leaves
# DIR/<run>.done and is skipped; an interrupted one resumes from its checkpoint.
# Usage: bash eval/sgopt_table.sh [DIR] [SEEDS]   (default runs/sgopt_table "0 1 2")
cd "$(dirname "$0")/.."
R=${1:-runs/sgopt_table}; SEEDS=${2:-0 1 2}; mkdir -p $R
T=$R/times.tsv
source eval/run_queue.sh
for pooling in cls mean; do
  run minilm_$pooling python eval/sts.py --model=minilm --pooling=$pooling --split=dev --out=$R/minilm_$pooling --noprogress
done
for seed in $SEEDS; do
  run sgopt_s$seed python main.py --config=configs/sgopt.py:cpu --config.seed=$seed --workdir=$R/sgopt_s$seed
  run sg_s$seed python main.py --config=configs/sgopt.py:sg_cpu --config.seed=$seed --workdir=$R/sg_s$seed
done
echo ALL DONE >> $T
