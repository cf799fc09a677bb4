#!/bin/bash
# The Chang et al. 2020 table at cpu scale (WORKSPACE, "Chang et al."): every pre-training and
# fine-tuning run, then `python eval/chang_table.py --runs=DIR`. Restartable: a finished run
# leaves DIR/<run>.done and is skipped; an interrupted one resumes from its checkpoint.
# Usage: bash eval/chang_table.sh [DIR]   (default runs/chang_table; ~4 h on 2 CPU cores)
cd "$(dirname "$0")/.."
R=${1:-runs/chang_table}; mkdir -p $R
T=$R/times.tsv
source eval/run_queue.sh
pre() { run pre_$1 python main.py --config=configs/chang.py:$2 --workdir=$R/pre_$1; }
fine() {  # row, fraction tag, fraction, variant, init
  init=""; [ -n "$5" ] && init="--config.init=$R/pre_$5"
  run ft_$1_$2 python main.py --config=configs/reqa.py:$4 --workdir=$R/ft_$1_$2 --config.data.train_fraction=$3 $init
}
row() { fine $1 1 0.01 $2 $3; fine $1 5 0.05 $2 $3; fine $1 80 0.8 $2 $3; }
run bm25 python eval/reqa.py --model=bm25 --squad=squad --train_fraction=0.8 --seed=0 --candidates=test --out=$R/bm25 --noprogress
pre mix mix_cpu
row none cpu ""
row mix cpu mix
pre bow_mix bow_mix_cpu
row bow_none bow_cpu ""
row bow_mix bow_cpu bow_mix
pre ict ict_cpu
row ict cpu ict
pre bfs bfs_cpu
row bfs cpu bfs
pre wlp wlp_cpu
row wlp cpu wlp
echo ALL DONE >> $T
