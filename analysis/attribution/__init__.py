"""Start from a prompt: which units fire (relative to their own corpus maximum), which cause a prediction
(attribution through the frozen model), checked by intervention, and how the causes connect.

Units are read as everywhere else (``analysis.activations``): every MLP neuron of every layer (the input of the
MLP's output projection) and every feature of the dictionaries given (encoded at their site).

**Frozen model.** Inside ``frozen``, every attention pattern and every normalisation denominator (LayerNorm's
standard deviation, RMSNorm's root mean square, the final norm's too) is a constant for gradients, as attribution
graphs freeze them: forward values are unchanged (the patterns are computed from detached queries and keys; a
norm's output is its own value plus a zero-valued linear term with the clean denominator). The MLPs' own
nonlinearities stay. A unit's **attribution** to a target ``m`` is ``a · ∂m/∂a`` at its position: the first-order
(direct plus indirect) effect of removing it, exact for a unit whose only path to the target is linear (a
last-layer neuron), an estimate elsewhere that ``check_by_ablation`` measures against the real effect.

A dictionary feature is spliced in without changing any value: the site becomes ``x + decode(f) − decode(f)``
with ``f`` a copy of the feature activations, so the gradient reaches each feature through its decoder direction
while the rest of the model (and every neuron's attribution) sees the unedited site. A transcoder's features are
encoded from the MLP's normed input (kept in the graph: edges into them come from earlier units) and spliced the
same way into the MLP's output, the site its decoder writes (``sae.writes``); the MLP itself keeps its gradient,
so its neurons' attributions are those of the model without the transcoder. Checked by ablation, a feature is
removed where its decoder writes (``analysis.activations.edited_features``).

Modules: ``units`` (the prompt's units, targets, relative activation, rankings), ``frozen`` (the frozen model and
``attribute``), ``check`` (real ablation beside the estimates), ``graph`` (edges between the top units).
"""
