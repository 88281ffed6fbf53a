#!/usr/bin/env bash
# The tuned reference run (issue 13): tune every paradigm, the LoRA variants included, with the same 6 trials on
# ml-100k validation, then run the tuned configuration with 3 seeds. Both steps continue where an interrupted
# earlier call stopped (the Optuna studies in results/ml-100k-tuning/study.db; the run's finished jobs in
# results/.ml-100k-tuned.partial/). On 2 CPU cores this is many hours (each LoRA trial is 10-25 minutes): run it
# in the background, e.g. `nohup scripts/reference_tuned.sh > tuned.log 2>&1 &`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PARADIGMS='all,id-direct-lora,id-translation-lora'

"$PY" -m bench tune --paradigms "$PARADIGMS" --dataset ml-100k --trials 6 --out results/ml-100k-tuning --quiet
if [ -d results/.ml-100k-tuned.partial ]; then
  "$PY" -m bench run --resume results/ml-100k-tuned --quiet
elif [ ! -d results/ml-100k-tuned ]; then
  "$PY" -m bench run --paradigms "$PARADIGMS" --dataset ml-100k --config results/ml-100k-tuning/tuned.yaml \
    --seeds 0,1,2 --out results/ml-100k-tuned --quiet
fi
