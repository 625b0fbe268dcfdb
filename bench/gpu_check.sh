#!/bin/bash
# The GPU checks of bench/RESULTS.md in one script, for a lent device machine (one NVIDIA GPU, the workplace's
# CUDA image: python3 with torch, transformers, numba; no network). Prepare here, once per session:
#   mkdir -p .gpu/model .gpu/home/corpora .gpu/wheels && echo /.gpu/ >> .git/info/exclude
#   cp data/models/smollm2-135m/{config.json,tokenizer.json,tokenizer_config.json} .gpu/model/
#   cp data/corpora/enwiki-sample.jsonl .gpu/home/corpora/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .gpu/wheels duckdb==2.0.0     # the image has no duckdb
# then run `bash bench/gpu_check.sh` there with .gpu carried. It prints the harvest against its forward floor at
# the GPU's default batch (256), and times a build's harvest (all 30 layers, the whole sample) and Neuron2Graph
# for 32 neurons of layers 15 and 29, on SmolLM2's architecture with random weights (bench/random_model.py).
set -u
export PYTHONUNBUFFERED=1 NEURON_VIEWER_HOME=$PWD/.gpu/home
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl \
    && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m bench.random_model --like .gpu/model --out /tmp/rand 2>&1 | grep -v Writing
echo "== harvest vs forward floor"
timeout 150 python3 -m bench.harvest --device cuda --model /tmp/rand --tokens 131072 --skip-naive --repeat 2
echo "== build: harvest (whole sample, 30 layers) + n2g (layers 15, 29; neurons 0-31)"
rm -f /tmp/gpu.duckdb*
time (timeout 240 python3 -m analysis build --model /tmp/rand --device cuda --db /tmp/gpu.duckdb --quiet \
    --lenses harvest,n2g --expensive-layers 15,29 --expensive-neurons 0-31)
cat /tmp/gpu.duckdb.costs.json
