"""Neuron2Graph (Foote et al. 2023): prune, saliency, augment, trie, predict, evaluate.

``fit`` fits graphs for many units of a layer at once, ``graph`` is the trie and its prediction, ``evaluate``
the firing P/R/F1, ``pipeline`` splits a unit's records, scores its graph against token-lookup and turns it
into a simulator."""
