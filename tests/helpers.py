"""What several test files share: a tiny trained tokenizer and tiny random-weight models of four families, a
random TopK SAE, a record, the viewer's pages under AppTest, and the comparisons of float results against an
independent computation (the float32 tolerance, rankings with near-ties)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

KINDS = ["gpt2", "llama", "gemma", "neox"]
REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "viewer" / "views"

RTOL = ATOL = 1e-5
"""float32 results of one computation in two summation orders (a batch against a single sequence, another kernel,
float64 by hand) agree to 1e-5, relative above magnitude 1 (the README's tolerance)."""

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Neurons in language models respond to tokens, numbers like 1 2 3 and punctuation!",
    "<script>alert(1)</script> and <img src=x onerror=alert(2)> are text, not markup.",
    "In 1905 Einstein published four papers; the third was on special relativity.",
]
SPLIT_TEXT = "Paris سلام עברית 😀🎉 café"
"""Characters that a byte-level tokenizer trained on ASCII splits over several tokens."""


def tiny_tokenizer(bos: bool = False, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences (offline, a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_TEXT * 3, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_config(kind: str, vocab_size: int, n_layers: int = 3, d_mlp: int = 48):
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=n_layers, n_head=4)
    if kind == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "gemma":
        return Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                                sliding_window=8)
    if kind == "neox":
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                             num_attention_heads=4, max_position_embeddings=128)
    raise ValueError(kind)


def tiny_model_folder(folder: Path, kind: str, bos: bool = False, n_layers: int = 3, seed: int = 0,
                      vocab_size: int = 300, d_mlp: int = 48) -> Path:
    """Save a tiny random-weight model of ``kind`` with the tiny tokenizer into ``folder`` (``d_mlp``: llama only)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(bos=bos, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = tiny_config(kind, vocab_size=len(tokenizer), n_layers=n_layers, d_mlp=d_mlp)
    config.attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    # random init is small; widen it so activations have a real spread
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_topk_sae(d_in: int, d_sae: int, k: int, layer: int, site: str = "resid_post", seed: int = 0):
    """A random TopK SAE (analysis.sae.model.SAE) with decoder rows of unit norm."""
    from analysis.sae.model import finish, SAE

    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    sae = SAE(W_enc=W_dec.T.contiguous(), b_enc=torch.randn(d_sae, generator=g) * 0.1, W_dec=W_dec,
              b_dec=torch.randn(d_in, generator=g) * 0.1, architecture="topk", k=k, layer=layer, site=site,
              apply_b_dec_to_input=True, name="tiny-sae")
    return finish(sae)


def random_transcoder(d: int, d_sae: int, k: int, layer: int, seed: int = 0, name: str = "tiny-transcoder"):
    """A random TopK transcoder (the MLP's normed input -> its output) of width ``d``."""
    from analysis.sae.model import finish, SAE

    g = torch.Generator().manual_seed(seed)
    return finish(SAE(W_enc=torch.randn(d, d_sae, generator=g) / d ** 0.5,
                      b_enc=torch.randn(d_sae, generator=g) * 0.1, W_dec=torch.randn(d_sae, d, generator=g) / d ** 0.5,
                      b_dec=torch.randn(d, generator=g) * 0.01, architecture="topk", k=k, layer=layer,
                      site="mlp_input", output_site="mlp_out", name=name))


@dataclass
class Rec:
    """An activation record as the explainers and simulators read it."""

    tokens: list[str]
    token_ids: list[int]
    activations: list[float]
    window_id: int = 0


# ---- the viewer's pages under Streamlit's AppTest ------------------------------------------------------------

def open_page(name: str, db: Path, monkeypatch, **params):
    """Run ``viewer/views/<name>.py`` on the database ``db`` with these query parameters; return the AppTest."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("NEURON_VIEWER_DB", str(db))
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = str(v)
    return at.run()


def all_html(at) -> str:
    return "".join(h.proto.body for h in at.html)


def build_contents(db) -> dict:
    """What a build stored, without timings and timestamps."""
    from cache.store import open_store

    queries = {
        "runs": "SELECT model_id, corpus_id, layers, n_windows, n_tokens, status FROM runs ORDER BY ALL",
        "stats": "SELECT layer, unit, n_tokens, mean, std, max, hist FROM unit_stats ORDER BY ALL",
        "samples": "SELECT layer, unit, kind, bin, rank, window_id FROM samples ORDER BY ALL",
        "explanations": "SELECT explanation_id, layer, unit, explainer, text FROM explanations ORDER BY ALL",
        "baselines": "SELECT layer, unit, predictor, scoring_set, window_ids, predicted, score FROM baselines "
                     "ORDER BY ALL",
        "graphs": "SELECT layer, unit, params, metrics, firing_f1, test_window_ids, n_patterns FROM n2g_graphs "
                  "ORDER BY ALL",
        "patterns": "SELECT * EXCLUDE (run_id) FROM n2g_patterns ORDER BY ALL",
    }
    with open_store(db, read_only=True) as s:
        return {k: s.con.execute(q).fetchall() for k, q in queries.items()}


# ---- float results against an independent computation --------------------------------------------------------

def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error, absolute below magnitude 1 and relative above it (fp32 carries ~7 significant digits, and
    SmolLM2 has 'massive' activations of ~2,800 where one fp32 ulp is 2.4e-4)."""
    return ((got.double() - ref.double()).abs() / ref.double().abs().clamp(min=1.0)).max().item()


def assert_same_top(got_ids, got_vals, ids, vals, rtol: float = RTOL, atol: float = ATOL) -> None:
    """``got_ids``/``got_vals``: the k candidates a computation ranked first, largest first; ``ids``/``vals``:
    every candidate with its value computed independently. The values must be the k largest (sorted, within
    tolerance) and each named candidate's own value; the ids must be the independent ranking's only at ranks whose
    value is not within tolerance of another candidate's (a near-tie may be broken either way)."""
    got_ids, got_vals = np.asarray(got_ids), np.asarray(got_vals, dtype=np.float64)
    ids, vals = np.asarray(ids), np.asarray(vals, dtype=np.float64)
    k = len(got_ids)
    order = np.argsort(-vals, kind="stable")
    ref = vals[order]
    np.testing.assert_allclose(got_vals, ref[:k], rtol=rtol, atol=atol)
    assert len(set(got_ids.tolist())) == k, got_ids
    by_id = dict(zip(ids.tolist(), vals))
    np.testing.assert_allclose([by_id[i] for i in got_ids.tolist()], got_vals, rtol=rtol, atol=atol)
    tol = atol + rtol * np.abs(ref)
    for rank in range(k):
        if (np.abs(ref - ref[rank]) <= tol + tol[rank]).sum() == 1:  # no other value within reach of this one
            assert got_ids[rank] == ids[order[rank]], (rank, got_ids, ids[order[:k]], ref[:k])


# ---- MLP neurons from the plain HF forward pass, by hand --------------------------------------------------------

def act_by_hand(name: str, x: torch.Tensor) -> torch.Tensor:
    """Activation functions written out from their definitions (not HF's ACT2FN)."""
    import math

    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "silu":
        return x / (1.0 + torch.exp(-x))
    raise ValueError(name)


def plain_forward_reference(subject, input_ids, attention_mask):
    """Run the plain HF model (full forward, lm_head included); recompute every MLP's neurons by hand
    from the MLP's input, read with a hook on the ``mlp`` module itself (not our hook point)."""
    model, info = subject.model, subject.info
    mlp_inputs: dict[int, torch.Tensor] = {}
    mlp_outputs: dict[int, torch.Tensor] = {}
    handles = [
        subject.mlp(layer).register_forward_pre_hook(lambda _m, args, layer=layer: mlp_inputs.__setitem__(layer, args[0]))
        for layer in range(info.n_layers)
    ] + [
        subject.mlp(layer).register_forward_hook(lambda _m, _a, out, layer=layer: mlp_outputs.__setitem__(layer, out))
        for layer in range(info.n_layers)
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    ref = {}
    for layer in range(info.n_layers):
        x = mlp_inputs[layer].double()
        mlp = subject.mlp(layer)
        if info.architecture == "gpt2":
            pre = x @ mlp.c_fc.weight.double() + mlp.c_fc.bias.double()  # Conv1D: [in, out]
            ref[layer] = act_by_hand(info.act_fn, pre)
        elif info.architecture == "gpt_neox":
            pre = x @ mlp.dense_h_to_4h.weight.double().T + mlp.dense_h_to_4h.bias.double()
            ref[layer] = act_by_hand(info.act_fn, pre)
            # NeoX's parallel residual: the MLP reads the normed *block input*, i.e. hidden_states[layer]
            ln = subject.blocks()[layer].post_attention_layernorm
            h = out.hidden_states[layer].double()
            normed = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + ln.eps)
            normed = normed * ln.weight.double() + ln.bias.double()
            assert torch.allclose(normed, x, atol=1e-5)
        else:
            gate = x @ mlp.gate_proj.weight.double().T
            up = x @ mlp.up_proj.weight.double().T
            ref[layer] = act_by_hand(info.act_fn, gate) * up
    return ref, mlp_outputs


def old_checkout(root: Path) -> Path:
    """A checkout's cache/ folder as it was before data/: data products beside the store package's code."""
    old = root / "cache"
    (old / "models" / "smollm2-135m").mkdir(parents=True)
    (old / "models" / "smollm2-135m" / "config.json").write_text("{}")
    (old / "wheels").mkdir()
    (old / "wheels" / ".gensim").write_text("")
    (old / "demo.duckdb").write_bytes(b"db")
    (old / "demo.duckdb.build.log").write_text("log")
    (old / "demo.duckdb.harvest").mkdir()
    (old / "store.py").write_text("# the package's own code stays")
    return old
