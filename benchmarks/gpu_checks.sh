#!/bin/bash
# The CUDA paths for real, in one go on a machine with a GPU: the CUDA tests, streamed inference
# against MONAI (SegResNet, 400x512x512, 14 classes), the fit against the bare training step
# (DynUNet 31M, bf16, patch 128^3, 4 workers), the main job with trainer=gpu, and a short fine-tune.
# Each step has its own time limit so that one slow step leaves the others their time; each step's
# output goes to $OUT/<step>.txt and a summary to $OUT/log.txt.
#
#   bash benchmarks/gpu_checks.sh                 # OUT defaults to ./gpu_checks
#
# Where the machine's Python lacks this project's packages, put their wheels in .whl/ (pip download
# --no-deps ... -d .whl monai hydra-core omegaconf antlr4-python3-runtime nibabel isal pydicom):
# they are installed into /tmp/site first.
OUT=${OUT:-gpu_checks}
mkdir -p "$OUT"
T0=$(date +%s)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline UMD_CACHE_DIR=${UMD_CACHE_DIR:-/tmp/umd_cache}
L=$OUT/log.txt
step() {  # name timeout_s command...: run it, keep its output, append its tail to the summary
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  echo "=== $name at +$((start - T0)) s" >> "$L"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n "${TAIL:-25}" "$OUT/$name.txt" >> "$L"
  echo "=== $name: exit $rc after $(($(date +%s) - start)) s" >> "$L"
}
left() { echo $(($1 - ($(date +%s) - T0))); }  # seconds left of a plan of $1 seconds
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } >> "$L" 2>&1
python3 -c "import torch, monai, lightning; print('torch', torch.__version__, 'monai', monai.__version__,
'lightning', lightning.__version__, torch.cuda.get_device_name(0))" >> "$L" 2>&1
TAIL=10 step pytest 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_paths.py tests/models/test_inference.py tests/lit/test_augment.py
TAIL=20 step infer 140 python3 benchmarks/inference_bench.py --device cuda --runs net ours monai_dev
TAIL=30 step train 140 python3 benchmarks/train_bench.py --device cuda --subjects 12 --steps 40 --warmup 8
TAIL=40 step main 120 bash -c "time python3 -m umd_lightning +experiment=zero_shot_pet trainer=gpu logger=csv analysis=none hydra.run.dir=/tmp/gpu_main"
[ "$(left 470)" -gt 60 ] && TAIL=12 step infer_amp "$(left 470)" python3 benchmarks/inference_bench.py --device cuda --runs net ours --autocast
[ "$(left 500)" -gt 60 ] && TAIL=30 step fit "$(left 500)" python3 -m umd_lightning +experiment=finetune_ct trainer=gpu logger=csv analysis=none trainer.max_steps=60 data.k_shot=2 hydra.run.dir=/tmp/gpu_fit
echo "=== total $(($(date +%s) - T0)) s" >> "$L"
