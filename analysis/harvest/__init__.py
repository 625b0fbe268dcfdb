"""The harvest: one streaming pass over token windows that keeps, for every unit of every requested slot (a
layer's neurons, or a dictionary's features at its layer), what the viewer and every method need, in memory that
does not grow with the corpus.

Shape: passes. ``LayerState.add_batch`` folds one batch of activations into a slot's running state, in place. A
pass folds every window into the states of some slots and writes each slot as it is done; the job splits a
model's slots into passes that fit a memory budget (``memory``: bytes per unit of each part, measured against peak
RSS), and a Ray cluster runs passes side by side. A pass checkpoints every few minutes and resumes after the
windows it holds, folding the same batches in the same order, so a resumed harvest is bit-identical.

Per unit (neuron) the state holds:
- the top-k windows by max activation, with their activations (float16);
- a uniform random pool of windows: bottom-``pool`` by a per-(layer, neuron, window) hash key (so each unit's
  sample is independent of the others', as OpenAI's), with activations. The random sample is the pool's first
  ``random_k`` by key; the quantile samples bin the pool by its own window-max quantiles;
- power moments (n, mean, M2, M3, M4 in float64, merged with Pebay's formulas), min, max, count > 0;
- a histogram on a fixed log grid read from the float16 bits (mergeable: the grid never depends on the data);
- per-token activation sums for the corpus's frequent tokens (the token table), counts shared by all units.

Modules: ``kernels`` (a batch's per-unit sums, random keys, the compiled merges), ``state`` (``LayerState``,
``HarvestState``: fold, the token table), ``summary`` (``summarise``: a slot's state to the ``LayerSummary`` the
store writes, ``analysis.types``), ``memory`` (the memory model and passes), ``driver`` (``PassTask``,
``run_harvest``: a pass, checkpoints).
"""
