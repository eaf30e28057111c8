#!/bin/bash
# Pilot, first round (issue 12): which cheap settings leave the unigram plateau. Resumable: a finished run has
# model.safetensors. The schedule is given explicitly: small_pretrain.yaml has since moved to inverse_sqrt.
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
run() { name=$1; shift
  out=runs/pilot/$name
  [ -f $out/model.safetensors ] && return
  python recipes/pretrain.py --config recipes/configs/study/small_pretrain.yaml \
     --output_dir $out --resume_from_checkpoint latest --max_steps 1000 --lr_scheduler_type linear "$@" \
     > runs/pilot/$name.log 2>&1
}
run lr5e-4_wu200 --learning_rate 5e-4 --warmup_steps 200 &
run lr2e-4_wu100 --learning_rate 2e-4 --warmup_steps 100 &
run lr1e-3_wu500 --learning_rate 1e-3 --warmup_steps 500 &
wait
