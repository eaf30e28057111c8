#!/bin/bash
# Pilot downstream check: POS sw within-language of the lr1e-3 pilot model (1000 steps) vs the same model at random init.
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
tok=runs/pilot/lr1e-3_wu500/tokenizer
[ -f runs/pilot/random_init/model.safetensors ] || python recipes/pretrain.py --config recipes/configs/study/small_pretrain.yaml \
   --output_dir runs/pilot/random_init --learning_rate 0 --max_steps 1 --warmup_steps 0 --eval_strategy no --save_strategy no \
   --tokenizer_name_or_path $tok > runs/pilot/random_init.log 2>&1
for model in lr1e-3_wu500 random_init; do
  out=runs/pilot/pos_within_sw_$model
  [ -f $out/metrics.json ] || python recipes/finetune.py --task pos --setting within --train_language sw --eval_languages sw \
    --model_name_or_path runs/pilot/$model --output_dir $out --batch_sizes 32 --learning_rates 3e-4 --epochs 5 \
    --max_train_examples 2000 --max_seq_length 128 --per_device_eval_batch_size 64 --use_cpu true --disable_tqdm true \
    --report_to none --seed 0 > $out.log 2>&1
done
