"""Job: train a TopK SAE on one site of a model (or a TopK transcoder of one layer's MLP) over corpus windows,
measure it on held-out windows, save it as a SAELens folder (resumable; a folder that already holds the same
training is left alone)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from analysis.config import DEFAULT_CORPUS, DEFAULT_MODEL
from analysis.progress import Progress
from analysis.sae_eval import SAEQuality, TranscoderQuality
from analysis.sae_train import TrainConfig
from analysis.types import UserError

STATE_FILE = ".train_state.pt"
"""The training checkpoint inside the output folder (deleted once the SAE is saved)."""
KINDS = ("sae", "transcoder")


@dataclass(frozen=True)
class SaeTrainJob:
    layer: int
    """Layer."""
    out: str
    """The folder the SAE is written to (SAELens layout: cfg.json + sae_weights.safetensors)."""
    train: TrainConfig
    """Width, k, epochs, batch, learning rate, AuxK settings, seed."""
    model: str = DEFAULT_MODEL
    """Embedded name, HF folder, .gguf file or hub id."""
    site: str = "resid_post"
    """Hook site."""
    corpus: str = DEFAULT_CORPUS
    """Embedded name or a text/JSONL/parquet path."""
    tokens: int = 100_000
    """Training tokens: a seeded random subset of the corpus's windows up to this many tokens."""
    eval_tokens: int = 4096
    """Held-out tokens (windows disjoint from the training ones) the quality numbers are measured on."""
    seq_len: int = 64
    """Tokens per window."""
    batch_size: int = 16
    """Windows per forward pass."""
    device: str = "cpu"
    """Cpu or cuda."""
    checkpoint_every: int = 50
    """Training steps between checkpoints."""
    kind: str = "sae"
    """What to train: sae (a TopK SAE of --site) or transcoder (a TopK transcoder of the layer's MLP: from its
    normed input, mlp_input, to its output, mlp_out; --site is not used)."""

    def settings(self) -> dict:
        """What determines the result (stored with it; a folder holding the same settings is not trained again).
        An SAE's have no ``kind`` (they are those of before transcoders: its folders stay trained); a transcoder's
        have ``kind`` and no ``site``."""
        skip = {"out", "device", "batch_size", "checkpoint_every", "train", "kind"}
        if self.kind != "sae":
            skip.add("site")
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {**own, **({} if self.kind == "sae" else {"kind": self.kind}), **asdict(self.train)}


@dataclass(frozen=True)
class SaeTrainSummary:
    out: str
    status: str
    """'done' (trained now) or 'cached' (the folder already held this training)."""
    quality: SAEQuality
    train_tokens: int
    seconds: float


def _finished(out: Path, settings: dict) -> dict | None:
    """The ``training`` dict of an SAE in ``out`` trained with ``settings``; None if there is none. Refuses to
    overwrite a folder holding an SAE that this job did not train."""
    cfg_path = out / "cfg.json"
    if not cfg_path.exists():
        return None
    training = json.loads(cfg_path.read_text()).get("training")
    if not isinstance(training, dict) or "settings" not in training:
        raise UserError(f"{out} already holds an SAE that `sae train` did not make: choose another --out")
    return training if training["settings"] == settings else None


def _upgraded(out: Path) -> bool:
    """Rewrite the cfg.json of a folder saved before ``save_sae`` wrote ``metadata.sae_lens_version`` (SAELens read
    no hook or model name from those); the weights are written back unchanged. True if it did."""
    from analysis.sae.load import load_sae
    from analysis.sae.saelens import save_sae

    cfg = json.loads((out / "cfg.json").read_text())
    meta = cfg.get("metadata") or {}
    if meta.get("sae_lens_version") or cfg.get("normalize_activations", "none") != "none":
        return False
    save_sae(load_sae(str(out)), out, dataset=meta.get("dataset_path"), context_size=meta.get("context_size"),
             training=cfg.get("training"))
    return True


def _quality(training: dict) -> SAEQuality:
    cls = TranscoderQuality if training["settings"].get("kind") == "transcoder" else SAEQuality
    return cls(**{f.name: training[f.name] for f in fields(cls)})


def train_sae(job: SaeTrainJob, progress: Progress = Progress()) -> SaeTrainSummary:
    """Train (or resume, or find already trained) the job's SAE; measure it; save it to ``job.out``."""
    from analysis.corpus import load_corpus, make_windows, select_windows, windows_hash
    from analysis.models import load_model
    from analysis.sae.model import SITES
    from analysis.sae.saelens import save_sae
    from analysis.sae_eval import evaluate_sae
    from analysis.sae_train import check_mlp_hookable, train_topk_sae, train_topk_transcoder

    if job.kind not in KINDS:
        raise UserError(f"--kind {job.kind!r}: use one of {', '.join(KINDS)}")
    transcoder = job.kind == "transcoder"
    if not transcoder and job.site not in SITES:
        raise UserError(f"--site {job.site!r}: use one of {', '.join(SITES)}")
    if min(job.tokens, job.eval_tokens, job.seq_len, job.batch_size, job.checkpoint_every) < 1:
        raise UserError("--tokens, --eval-tokens, --seq-len, --batch-size and --checkpoint-every must be positive")
    out = Path(job.out).expanduser()
    settings = job.settings()
    done = _finished(out, settings)
    if done is not None:
        progress.note(f"{out} already holds this SAE (trained on {done['train_tokens']:,} tokens): nothing to do"
                      + (" (its cfg.json rewritten in the SAELens 6.x layout)" if _upgraded(out) else ""))
        return SaeTrainSummary(str(out), "cached", _quality(done), done["train_tokens"], 0.0)
    if (out / "cfg.json").exists():
        progress.note(f"{out} holds an SAE trained with other settings: it will be replaced")
    t0 = time.time()
    subject = load_model(job.model, device=job.device)
    subject.check_layer(job.layer)
    if transcoder:
        check_mlp_hookable(subject, job.layer)
    corpus = load_corpus(job.corpus)
    windows = list(make_windows(corpus.documents, subject.tokenizer, job.seq_len))
    held_out = select_windows(windows, job.eval_tokens, seed=job.train.seed)
    held = {w.window_id for w in held_out}
    train_windows = select_windows([w for w in windows if w.window_id not in held], job.tokens,
                                   seed=job.train.seed)
    if not train_windows:
        raise UserError(f"corpus {job.corpus!r} has no windows left for training after {job.eval_tokens:,} "
                        "held-out tokens: lower --eval-tokens or use a larger corpus")
    run_id = hashlib.sha256(json.dumps([settings, subject.info.model_id, windows_hash(train_windows)],
                                       sort_keys=True).encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_FILE
    n_train = sum(len(w.token_ids) for w in train_windows)
    what = "mlp_input -> mlp_out: TopK transcoder" if transcoder else f"{job.site}: TopK"
    progress.note(f"sae train {subject.info.name} L{job.layer} {what} {job.train.width} k={job.train.k}, "
                  f"{n_train:,} tokens x {job.train.epochs} epochs of {corpus.info.corpus_id}"
                  + (" (resuming)" if state.exists() else ""))
    try:
        if transcoder:
            sae = train_topk_transcoder(subject, train_windows, job.layer, job.train, job.batch_size, state, run_id,
                                        job.checkpoint_every, progress)
        else:
            sae = train_topk_sae(subject, train_windows, job.layer, job.site, job.train, job.batch_size, state,
                                 run_id, job.checkpoint_every, progress)
    except KeyboardInterrupt:
        progress.note(f"\ninterrupted: training is checkpointed in {state}; run the same command again to resume")
        raise
    t1 = time.time()
    quality = evaluate_sae(subject, sae, held_out, job.batch_size, progress)
    training = {"settings": settings, "model_id": subject.info.model_id, **sae.meta, **quality.to_json(),
                "train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.time() - t1, 1)}
    save_sae(sae, out, dataset=corpus.info.corpus_id, context_size=job.seq_len, training=training)
    state.unlink(missing_ok=True)
    return SaeTrainSummary(str(out), "done", quality, sae.meta["train_tokens"], time.time() - t0)
