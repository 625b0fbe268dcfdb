"""The nouns every stage shares: small frozen records, named once.

Activations are always in the neuron's own units (the input of the MLP output projection), never
normalised, unless a field says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class UserError(Exception):
    """Bad input from the user (unknown name, unsupported model, bad path...).

    The CLI prints the message and exits non-zero, without a traceback; the viewer shows it as an error box.
    """


@dataclass(frozen=True)
class ModelInfo:
    """What a harvest needs to know about a subject model, and what the cache stores with every result."""

    name: str
    """The name the user gave: an embedded name, a hub id, a folder or a .gguf path."""
    model_id: str
    """Stable id in the cache: ``name@<weights hash prefix>``."""
    source: str
    """Where the weights came from: 'embedded', 'hub', 'folder' or 'gguf'."""
    architecture: str
    """HF ``model_type`` (gpt2, llama, gemma3_text, gpt_neox, ...)."""
    n_layers: int
    d_mlp: int
    """Neurons per layer: the width of the MLP output projection's input."""
    hook_point: str
    """Module path of the hooked input, with ``{layer}`` for the layer index."""
    act_fn: str
    """The model's own MLP activation function (config name), e.g. 'silu' (gated), 'gelu_new'."""
    gated: bool
    """True for act(gate) * up MLPs (LLaMA, Gemma), False for act(W_in x) MLPs (GPT-2, NeoX)."""
    weights_hash: str
    """sha256 of the weight files."""
    tokenizer_id: str
    """``<tokenizer name>@<hash of its vocabulary>``."""
    prepend_bos: bool
    """Whether the tokenizer puts a BOS token first; harvest windows then get one too (not recorded)."""


@dataclass(frozen=True)
class DictionaryInfo:
    """A dictionary (an SAE, or a baseline set of directions) as the cache knows it: its features are the units
    of source ``source`` at ``layer``."""

    source: str
    """``sae:<name>@<digest prefix>``."""
    model_id: str
    name: str
    format: str
    """saelens, gemma-scope, gemma-scope-2, sparsify or baseline."""
    architecture: str
    """relu, jumprelu, topk or linear."""
    layer: int
    site: str
    d_in: int
    d_sae: int
    k: int | None
    path: str
    """Its folder ('' for a baseline, rebuilt from ``meta``)."""
    meta: dict
    """Quality numbers (fvu, l0, dead fraction, loss recovered), training settings, a baseline's kind and seed."""

    @property
    def kind(self) -> str:
        """'sae', 'transcoder' (it writes another site than it reads: ``meta['output_site']``), or the baseline's
        kind ('basis', 'random')."""
        return self.meta.get("baseline") or ("transcoder" if self.meta.get("output_site") else "sae")


@dataclass(frozen=True)
class CorpusInfo:
    corpus_id: str
    """Stable id: the embedded name, or ``<file name>@<text hash prefix>``."""
    name: str
    source: str
    """'embedded' or the path it was read from."""
    text_hash: str
    n_docs: int
    n_chars: int


@dataclass(frozen=True)
class Document:
    doc_id: int
    title: str
    text: str


@dataclass(frozen=True)
class Window:
    """A fixed run of at most ``seq_len`` tokens from one document: the unit every record is made of."""

    window_id: int
    """Index of the window in corpus order (documents in order, offsets in order)."""
    doc_id: int
    offset: int
    """Token offset of the window's first token in its document's tokenisation (no special tokens)."""
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Explanation:
    """A one-sentence explanation of a unit ("the main thing this unit does is find ...") and who wrote it."""

    text: str
    explainer: str
    params: dict = field(default_factory=dict)
    usage: dict | None = None
    """What the API calls that wrote it cost (``analysis.api.Usage.to_json``); None for other explainers. Not
    part of its identity: a rerun answered from the reply cache stores the same explanation."""


MLP = "mlp"
"""The source of MLP neurons: the input of a layer's MLP output projection (see DESIGN.md, Neurons)."""


@dataclass(frozen=True, order=True)
class UnitId:
    """A unit: ``(source, layer, index)``. Source ``mlp`` is an MLP neuron; any other source names a dictionary
    (an SAE or transcoder) whose features are the units. Methods take records of a unit and never assume which
    source it came from, except where they read source-specific weights."""

    source: str
    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}/N{self.index}" if self.source == MLP else f"L{self.layer}/{self.source}#{self.index}"


@dataclass(frozen=True)
class TokenActivations:
    """Tokens and one value per token: what a heatmap draws (real, simulated or predicted activations)."""

    tokens: list[str]
    activations: list[float]
    runs: tuple[tuple[int, int, str], ...] = field(default=(), kw_only=True)
    """Tokens shown as one readable span, ``(start, end, text)`` covering every token (``analysis.tokens``), when
    some character is split over tokens; () when every token reads alone."""


@dataclass(frozen=True)
class ActivationRecord(TokenActivations):
    """One window's activations for one unit, as OpenAI's ActivationRecord plus ids and provenance."""

    token_ids: list[int]
    window_id: int
    doc_id: int
    offset: int


@dataclass(frozen=True)
class UnitStats:
    """Summary statistics of one unit over every real token of a harvest (padding and BOS excluded)."""

    n_tokens: int
    mean: float
    std: float
    """Population standard deviation."""
    skewness: float
    kurtosis: float
    """Excess kurtosis (Fisher: a normal distribution has 0), as scipy.stats.kurtosis."""
    min: float
    max: float
    frac_active: float
    """Fraction of tokens with activation > 0."""
    hist_counts: list[int]
    """Token counts per bin of ``hist_edges`` (the fixed float16-byte log grid of histogram.HIST_BIN_EDGES)."""
    hist_edges: list[tuple[float, float]]
    """Each bin's two edges, ordered from the most negative bin to the most positive."""


@dataclass(frozen=True)
class UnitRecord:
    """Everything the cache holds about one unit of one run (OpenAI's NeuronRecord, plus our extras)."""

    model_id: str
    corpus_id: str
    run_id: str
    unit: UnitId
    hook_point: str
    stats: UnitStats
    most_positive_activation_records: list[ActivationRecord]
    """Top windows by max activation, highest first."""
    random_sample: list[ActivationRecord]
    """Uniform random windows (independent per unit), in a fixed random order."""
    random_sample_by_quantile: list[list[ActivationRecord]]
    """Random windows per bin of the window-max distribution, lowest bin first."""
    quantile_boundaries: list[float]
    """Inner boundaries of those bins (window-max values); bin i is [b[i-1], b[i])."""
    top_tokens: list[tuple[int, str, float, int]] = field(default_factory=list)
    """(token id, token, mean activation, count): tokens this unit fires on most, highest mean first."""

    @property
    def layer(self) -> int:
        return self.unit.layer


@dataclass(frozen=True)
class Effects:
    """A unit's effect over records of its harvest when ablated."""

    unit: UnitId
    mode: str
    n_records: int
    n_positions: int
    mean_loss_change: float
    """Mean over positions of (ablated − clean) next-token cross-entropy, nats: > 0 when the unit helps."""
    mean_loss_change_top: float
    """The same over the top-activating records only."""
    promoted: list[tuple[int, float]]
    """(token id, mean log-probability clean − ablated): the tokens the unit raises most where it fires."""
    suppressed: list[tuple[int, float]]


@dataclass
class TokenMeans:
    """Rows of a layer's token table, as columns: unit, token id, mean activation, occurrences in the corpus."""

    unit: np.ndarray
    token_id: np.ndarray
    mean: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return len(self.unit)


@dataclass
class LayerSummary:
    """Everything the cache stores for one layer, as arrays over units (N) — see ``analysis.harvest.summary.summarise``."""

    layer: int
    n_tokens: int
    mean: np.ndarray
    std: np.ndarray
    skewness: np.ndarray
    kurtosis: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    frac_active: np.ndarray
    hist: np.ndarray  # [N, HIST_BINS] int64
    top_val: np.ndarray  # [K, N]
    top_wid: np.ndarray  # [K, N], -1 = none
    top_acts: np.ndarray  # [K, N, T] float16
    random_idx: np.ndarray  # [random_k, N] index into the pool, -1 = none
    quantile_idx: np.ndarray  # [bins, per_bin, N] index into the pool, -1 = none
    quantile_boundaries: np.ndarray  # [bins - 1, N]
    pool_wid: np.ndarray  # [R, N]
    pool_max: np.ndarray
    pool_acts: np.ndarray  # [R, N, T] float16
    token_means: "TokenMeans"
    """The rows of the token table worth storing."""
    source: str = MLP
