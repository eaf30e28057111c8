#!/usr/bin/env bash
# Fine-tuning pilot of issue 26 (results/finetune_pilot/README.md): pretrain the small study's JointPair (seed 0)
# and its random-init floor, then fine-tune both on every task of small_en_sw.yaml over a candidate grid
# (batch {16, 32} x lr {1e-4, 3e-4, 1e-3}, 10 epochs; QA 6 epochs), keeping every grid point's per-epoch dev curve.
# Run on the lent GPU machine (repository root; DATA=copy of ../shared/data; OUT=where metrics land); on CPU set
# DEVICE_ARGS="--use_cpu true". Usage: STAGE=pretrain|finetune DATA=... OUT=... bash results/finetune_pilot/pilot.sh
set -euo pipefail
DATA=${DATA:-../shared/data}; OUT=${OUT:-runs/finetune_pilot}; WORK=${WORK:-runs/finetune_pilot}
DEVICE_ARGS=${DEVICE_ARGS:---use_cpu false}; SMOKE=${SMOKE:-}
mkdir -p "$WORK" "$OUT"
base=recipes/configs/study/small_pretrain.yaml
if [[ ${STAGE:-pretrain} == pretrain ]]; then
  python recipes/pretrain.py --config $base --text_dir "$DATA/text" $DEVICE_ARGS --output_dir "$WORK/joint_pair" \
      ${SMOKE:+--max_steps 20 --eval_steps 10 --save_steps 10 --tokenizer_training_sentences 2000} > "$WORK/joint_pair.log" 2>&1 &
  python recipes/pretrain.py --config $base --text_dir "$DATA/text" $DEVICE_ARGS --output_dir "$WORK/random_init" \
      --learning_rate 0.0 --max_steps 1 --warmup_steps 0 --eval_strategy no --save_strategy no \
      ${SMOKE:+--tokenizer_training_sentences 2000} > "$WORK/random_init.log" 2>&1 &
  wait
  tail -3 "$WORK/joint_pair.log"; cat "$WORK/joint_pair/perplexity.json"
  exit 0
fi
run() {  # model task setting train_language epochs [extra...]
  local model=$1 task=$2 setting=$3 lang=$4 epochs=$5; shift 5
  local name=${model}_${task}_${setting}_${lang}
  python recipes/finetune.py --task $task --setting $setting --train_language $lang --eval_languages sw \
      --model_name_or_path "$WORK/$model" --model_name $model --data_dir "$DATA" --output_dir "$WORK/ft/$name" \
      --batch_sizes 16 32 --learning_rates 1e-4 3e-4 1e-3 --epochs $epochs --max_train_examples 2000 \
      --max_seq_length 128 --per_device_eval_batch_size 64 --seed 0 --disable_tqdm true --report_to none \
      --save_total_limit 2 $DEVICE_ARGS ${SMOKE:+--max_train_examples 40 --max_eval_examples 40 --epochs 2} "$@" \
      > "$WORK/ft/$name.log" 2>&1 && cp "$WORK/ft/$name/metrics.json" "$OUT/$name.json" || echo "FAILED $name"
}
mkdir -p "$WORK/ft"
for model in joint_pair random_init; do
  run $model pos within sw 10 &
  run $model ner within sw 10 &
  run $model qa within sw 6 --max_qa_length 192 --doc_stride 96 &
  run $model pos zero_shot en 10 &
  run $model ner zero_shot en 10 &
done
wait
ls "$OUT"
