#!/bin/bash
# One network regime on 4 x H200: profile, check, validate every schedule, DeepSpeed-MoE peer.
# Usage (device tool, repo root): bash scripts/gpu_regime.sh nvlink|hostmem|2nodes
# Results land in $OUT (profile, check, CSVs, traces tarball, log). NP=2 runs on 2 GPUs
# (profile h200x2-REG); SELFCHECK="plan files" first checks those plans' exactness.
set -u
REG=$1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
EM=""
case $REG in
  nvlink) ;;
  hostmem) export NCCL_P2P_DISABLE=1 ;;
  2nodes) export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4; EM="--emulate-nodes 2" ;;
  *) echo "unknown regime $REG"; exit 2 ;;
esac
CFG=${CFG:-docs/validation_configs.json}
STEPS=${STEPS:-6}
REPEATS=${REPEATS:-1}  # interleaved repeats of every plan (validate --repeats)
NP=${NP:-4}
P=h200x$NP
F="grep -v -e ^W1 -e OMP_NUM -e ^\*\*\*"
mkdir -p $OUT/traces
{
if [ -n "${SELFCHECK:-}" ]; then
  echo "== selfcheck"
  timeout 120 torchrun --nproc_per_node=$NP -m executor.selfcheck --plan $SELFCHECK --out $OUT/selfcheck-$REG.jsonl 2>&1 \
    | grep -v -e ^W1 -e OMP_NUM | tail -8
fi
echo "== profile $REG"; date -u
timeout 240 torchrun --nproc_per_node=$NP -m moesched profile --out $OUT/$P-$REG.json --models $CFG $EM 2>&1 | $F | tail -4
python -m moesched profile --check $OUT/$P-$REG.json > $OUT/check-$REG.txt 2>&1
echo "== validate $REG"; date -u
timeout ${VTMO:-400} torchrun --nproc_per_node=$NP -m moesched validate --profile $OUT/$P-$REG.json --configs $CFG \
  --regime $REG --out $OUT/validation-$REG.csv --traces $OUT/traces --steps $STEPS --warmup 2 --repeats $REPEATS $EM 2>&1 | $F
echo "== deepspeed $REG"; date -u
if [ -d .whl ] && [ -z "${NODS:-}" ]; then  # NODS=1 skips the DeepSpeed peer
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
  DS_BUILD_OPS=0 timeout ${DTMO:-150} torchrun --nproc_per_node=$NP -m executor.peer_deepspeed --configs $CFG --regime $REG \
    --out $OUT/deepspeed-$REG.csv --steps $STEPS --warmup 2 $EM 2>&1 | grep -e "^deepspeed" -e Error -e error | tail -12
fi
date -u
} 2>&1 | tee $OUT/log-$REG.txt
tar czf $OUT/traces-$REG.tgz -C $OUT traces && rm -rf $OUT/traces
