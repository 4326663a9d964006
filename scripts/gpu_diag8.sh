#!/bin/bash
# Session 8, first call: new profiles (per-collective interference, the step's setup and
# finish) over NVLink and on two nodes, then 4 configs x 4 schedules validated with 2
# interleaved repeats; over NVLink also under `torchrun --numa-binding=node` (A/B of the
# host's speed). Usage (device tool, repo root): [NP=2] bash scripts/gpu_diag8.sh  -> $OUT
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
CFG=results/gpu/session8/configs-diag.json
NP=${NP:-4}  # GPUs (2 on nvidia-h200-x2)
P=h200x$NP
S=vanilla,flowmoe,fsmoe,moesched
F="grep -v -e ^W1 -e OMP_NUM -e ^\*\*\*"
for REG in nvlink 2nodes; do
  ( EM=""
    [ $REG = 2nodes ] && { export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4; EM="--emulate-nodes 2"; }
    echo "== profile $REG"; date -u
    timeout 200 torchrun --nproc_per_node=$NP -m moesched profile --out $OUT/$P-$REG.json --models docs/validation_configs.json $EM 2>&1 | $F | tail -5
    python -m moesched profile --check $OUT/$P-$REG.json > $OUT/check-$REG.txt 2>&1
    echo "== validate $REG"; date -u
    timeout 200 torchrun --nproc_per_node=$NP -m moesched validate --profile $OUT/$P-$REG.json --configs $CFG \
      --schedules $S --regime $REG --out $OUT/diag-$REG.csv --steps 6 --warmup 2 --repeats 2 $EM 2>&1 \
      | grep -e "^validate" -e "error" -e "spread" -e "Spearman" -e "Error"
    if [ $REG = nvlink ]; then
      echo "== validate $REG numa-binding=node"; date -u
      timeout 200 torchrun --nproc_per_node=$NP --numa-binding=node -m moesched validate --profile $OUT/$P-$REG.json \
        --configs $CFG --schedules $S --regime $REG --out $OUT/diag-$REG-numa.csv --steps 6 --warmup 2 --repeats 2 2>&1 \
        | grep -e "^validate" -e "error" -e "spread" -e "Spearman" -e "Error" -e "numa" | head -40
    fi
    date -u )
done 2>&1 | tee $OUT/log-diag8.txt
