"""Sparse autoencoders (dictionaries of features over one hook site): load the formats people publish, encode,
decode, save in the SAELens layout.

One record, ``SAE``, whatever the file format:

    x' = x * input_scale − (b_dec if apply_b_dec_to_input)
    pre = x' @ W_enc + b_enc                       W_enc [d_in, d_sae]
    f = relu(pre)                                  'relu'     (SAELens "standard")
        relu(pre) * (pre > threshold)              'jumprelu' (SAELens, Gemma Scope)
        relu(pre) on the k largest pre, else 0     'topk'     (Gao et al. 2024; ties at the k-th value go to the
                                                               lower feature index)
        pre                                        'linear'   (our baseline directions: a basis or random)
    x_hat = (f @ W_dec + b_dec) / input_scale      W_dec [d_sae, d_in]

A transcoder (``output_site`` set) reads the MLP's normed input (``mlp_input``) and predicts the MLP's output
(``mlp_out``): ``y = f @ W_dec + b_dec [+ x @ W_skip.T]``, W_dec ``[d_sae, d_out]``, its output unscaled (SAELens).

Formats read (``load_sae``):
- SAELens folder: ``cfg.json`` + ``sae_weights.safetensors``; the current config (``architecture``, ``k``,
  ``metadata.hook_name``, ``metadata.model_name``, ``metadata.prepend_bos``) and the older flat one
  (``hook_point``/``hook_name``, ``activation_fn_str``, ``activation_fn_kwargs.k``).
  ``normalize_activations``: ``none``; ``expected_average_only_in`` multiplies inputs by the config's
  ``norm_scaling_factor`` when it has one, else by 1 — which is what SAELens does at run time (it folds the
  factor into the weights when it saves a trained SAE).
- Gemma Scope 1: ``params.npz`` (``W_enc, W_dec, b_enc, b_dec, threshold``), JumpReLU, no b_dec subtraction;
  Gemma Scope 2: ``params.safetensors`` with lower-case names. Site and layer come from the folder path
  (``…-res/layer_12/…``, ``resid_post/layer_12_…``) or a ``config.json`` beside them, or are given.
- EleutherAI sparsify: ``cfg.json`` (``num_latents`` or ``expansion_factor``, ``k``) + ``sae.safetensors``
  (``encoder.weight [n, d_in]``, ``encoder.bias``, ``W_dec``, ``b_dec``); inputs minus ``b_dec``, ReLU, TopK;
  the folder name (``layers.12``, ``layers.12.mlp``) is the hook.

Hook sites (``SITES``): ``resid_pre`` (the block's input), ``resid_post`` (its output), ``mlp_out`` and
``attn_out`` (what the MLP / attention sublayer adds to the residual stream; after the post-norm in Gemma 2/3).

Modules: ``model`` (``SAE``, hook names, the loaders' shared checks), one per format (``saelens``, ``gemma_scope``,
``sparsify``), ``load`` (``load_sae`` by folder, file or hub id; a cache row's dictionary), ``baselines``.
"""
