"""The harvest: one streaming pass over token windows that keeps, for every unit of every requested slot (a
layer's neurons, or a dictionary's features at its layer), what the viewer and every method need, in memory that
does not grow with the corpus.

Shape: map + merge. ``LayerState.add_batch`` folds one batch of activations into a state (the map step, in
place); ``LayerState.merge`` combines the states of two disjoint window sets (associative up to float
rounding, tested), so shards can run anywhere and be combined in any grouping. On one machine the loop merges
batch after batch into a running state and checkpoints it after shards (every shard, unless saving would take
over a tenth of the time, as on a GPU), so an interrupted job resumes where it last saved and produces
bit-identical results.

Per unit (neuron) the state holds:
- the top-k windows by max activation, with their activations (float16);
- a uniform random pool of windows: bottom-``pool`` by a per-(layer, neuron, window) hash key (so each unit's
  sample is independent of the others', as OpenAI's), with activations. The random sample is the pool's first
  ``random_k`` by key; the quantile samples bin the pool by its own window-max quantiles;
- power moments (n, mean, M2, M3, M4 in float64, merged with Pebay's formulas), min, max, count > 0;
- a histogram on a fixed log grid read from the float16 bits (mergeable: the grid never depends on the data);
- per-token activation sums for the corpus's frequent tokens (the token table), counts shared by all units.

Modules: ``kernels`` (a batch's per-unit sums, random keys, the compiled merges), ``state`` (``LayerState``,
``HarvestState``: fold, merge, the token table), ``summary`` (``summarise``: a state to the ``LayerSummary`` records
the store writes, ``analysis.types``), ``driver`` (``run_harvest``: shards, checkpoints, executors).
"""
