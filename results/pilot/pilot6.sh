#!/bin/bash
# Pilot, third round (issue 12): pilot5's model left its perplexity plateau only at the very end (validation
# perplexity flat at ~300-340 from step 750 to 2,250, then 261 -> 237 by step 3,000). Continue it to 6,000 steps
# (inverse-sqrt does not depend on max_steps: the same as one 6,000-step run) and repeat the downstream check
# against pilot5's random-init runs (same tokenizer, architecture and fine-tuning seeds). Resumable.
cd "$(dirname "$0")/../.."
export PATH=$PWD/.venv/bin:$PATH PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
root=runs/pilot6; mkdir -p $root
pre=$root/mask40_v2k_b64_6k
[ -d $pre ] || cp -r runs/pilot5/mask40_v2k_b64 $pre
[ -f $pre/checkpoint-6000/trainer_state.json ] || python recipes/pretrain.py \
   --config recipes/configs/study/small_pretrain.yaml --vocab_size 2000 --mlm_probability 0.4 \
   --per_device_train_batch_size 64 --tokenizer_name_or_path $pre/tokenizer --output_dir $pre \
   --resume_from_checkpoint latest --max_steps 6000 --save_steps 250 --eval_steps 250 > $pre.log 2>&1 || exit 1
for examples in 2000 250; do
  for seed in 0 1 2; do
    out=$root/pos_sw_${examples}_mask40_v2k_b64_6k_seed$seed
    [ -f $out/metrics.json ] || python recipes/finetune.py --task pos --setting within --train_language sw \
      --eval_languages sw --model_name_or_path $pre --output_dir $out --batch_sizes 32 \
      --learning_rates 3e-4 --epochs 5 --max_train_examples $examples --max_seq_length 128 \
      --per_device_eval_batch_size 64 --use_cpu true --disable_tqdm true --report_to none --seed $seed > $out.log 2>&1
  done
done
