# Fresh measurements of two held-out 4x families priced by passes8's profile refitted
# against operator recipe 2 (moesched profile --refit ... --models results/h200x1/configs-1gpu-dtypes2.json).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
D=results/h200x1/passes8/refit; W=$(mktemp -d)/refit-check; mkdir -p $W
nvidia-smi --query-gpu=name,uuid,driver_version,power.limit --format=csv > $W/gpu.csv
timeout ${VTIMEOUT:-170} taskset -c 2,3 torchrun --nproc_per_node=1 -m moesched validate --profile $D/h200x1-one-gpu.json \
  --configs $D/configs.json --out $W/validation-one-gpu.csv --steps 15 --warmup 3 --regime one-gpu --repeats 2 --workers 2 \
  2>&1 | grep --line-buffered -v -e Warn -e OMP -e UserWarning > $W/log-validate.txt
tail -8 $W/log-validate.txt
tar -C $(dirname $W) -czf $OUT/refit-check.tgz refit-check
