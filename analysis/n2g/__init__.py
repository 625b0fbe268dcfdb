"""Neuron2Graph (Foote et al. 2023): prune, saliency, (augment), trie, predict, evaluate. Work in progress:
the core algorithm and its evaluation; augmentation, batching across neurons, CLI and viewer are to come."""
