#!/bin/bash
# Pilot, second round: the lr1e-3 run's step-1000 checkpoint continued at a constant 1e-3 (no decay) to step 1500.
# First: mkdir -p runs/pilot/lr1e-3_wu500_then_const && cp -r runs/pilot/lr1e-3_wu500/{checkpoint-1000,tokenizer} runs/pilot/lr1e-3_wu500_then_const/
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
out=runs/pilot/lr1e-3_wu500_then_const
python recipes/pretrain.py --config recipes/configs/study/small_pretrain.yaml --output_dir $out \
   --resume_from_checkpoint latest --max_steps 1500 --learning_rate 1e-3 --warmup_steps 500 \
   --lr_scheduler_type constant_with_warmup --eval_steps 125 --save_steps 250 \
   --tokenizer_name_or_path $out/tokenizer > $out.log 2>&1
