"""Explainers: records of a unit in, a one-sentence explanation out. Each records its name and parameters."""

from __future__ import annotations

from analysis.prompts import EXPLAIN_SYSTEM, LEAD, clean_explanation, explain_prompt
from analysis.types import Explanation, UserError


def token_means(records: list) -> dict[tuple[int, str], tuple[float, int]]:
    """(token id, token) -> (mean activation, count) over the records' tokens."""
    sums: dict[tuple[int, str], list[float]] = {}
    for r in records:
        for tid, t, a in zip(r.token_ids, r.tokens, r.activations):
            sums.setdefault((tid, t), []).append(a)
    return {k: (sum(v) / len(v), len(v)) for k, v in sums.items()}


class TokenLookupExplainer:
    """Deterministic baseline: names the tokens with the highest mean activation in the records."""

    name = "token-lookup"

    def __init__(self, n_tokens: int = 4):
        self.n_tokens = n_tokens

    def explain(self, records: list, max_activation: float) -> Explanation:
        means = token_means(records)
        top = sorted(means.items(), key=lambda kv: -kv[1][0])[: self.n_tokens]
        words = [repr(t) for (_, t), _ in top]
        text = "the tokens " + (", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words))
        return Explanation(text, self.name, {"n_tokens": self.n_tokens})


class HumanExplainer:
    name = "human"

    def __init__(self, text: str, author: str = ""):
        if not text.strip():
            raise UserError("an explanation needs some text")
        self.text, self.author = text.strip(), author

    def explain(self, records: list, max_activation: float) -> Explanation:
        return Explanation(self.text.rstrip("."), self.name, {"author": self.author} if self.author else {})


class LocalExplainer:
    """A local instruct model through transformers (default: the embedded SmolLM2-135M-Instruct)."""

    name = "local"

    def __init__(self, subject, max_new_tokens: int = 32):
        self.subject, self.max_new_tokens = subject, max_new_tokens

    def complete(self, body: str) -> tuple[str, None]:
        """The model's continuation of ``body`` + the lead, as a user turn under the explainer instructions (and
        no API usage)."""
        import torch  # here, not at the top: the CLI's parser imports this module for ApiConfig

        tok, model = self.subject.tokenizer, self.subject.model
        body = body.strip()
        if body.endswith(LEAD):
            body = body[: -len(LEAD)].strip()
        messages = [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": body}]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + LEAD
        else:
            text = EXPLAIN_SYSTEM + "\n\n" + body + "\n" + LEAD
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids.to(self.subject.device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                 pad_token_id=self.subject.pad_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), None

    def params(self) -> dict:
        return {"model": self.subject.info.model_id, "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    def explain(self, records: list, max_activation: float) -> Explanation:
        text, _ = self.complete(explain_prompt(records, max_activation)[len(EXPLAIN_SYSTEM):])
        return Explanation(clean_explanation(text) or "(empty)", self.name, self.params())


class ApiExplainer:
    """A chat model at an OpenAI-compatible endpoint (``analysis.api.ApiClient``: budget, reply cache, usage)."""

    name = "api"

    def __init__(self, client):
        self.client = client

    def complete(self, body: str) -> tuple[str, dict]:
        reply = self.client.chat([{"role": "system", "content": EXPLAIN_SYSTEM},
                                  {"role": "user", "content": body.strip() + " ..."}], max_tokens=60)
        return reply.text, reply.usage.to_json()

    def params(self) -> dict:
        return {"base_url": self.client.config.base_url, "model": self.client.config.model}

    def explain(self, records: list, max_activation: float) -> Explanation:
        text, usage = self.complete(explain_prompt(records, max_activation)[len(EXPLAIN_SYSTEM):])
        return Explanation(clean_explanation(text), self.name, self.params(), usage=usage)


class RevisingExplainer:
    """The paper's revision step: the explainer reviews its own explanation against the records and rewrites
    it. ``explain_both`` returns (initial, revised); the revised one records the initial in its params."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def explain_both(self, records: list, max_activation: float) -> tuple[Explanation, Explanation]:
        initial = self.inner.explain(records, max_activation)
        body = explain_prompt(records, max_activation)[len(EXPLAIN_SYSTEM):].strip()
        body = body[: -len(LEAD)].strip() if body.endswith(LEAD) else body
        body += (f"\n\nA first explanation of this neuron was: the main thing this neuron does is find "
                 f"{initial.text}.\nCheck it against the activations above: which high activations does it "
                 f"miss, and where does it predict activity that is not there? Then write a better explanation.\n"
                 f"Revised explanation: {LEAD}")
        text, usage = self.inner.complete(body)
        revised = clean_explanation(text) or initial.text
        params = dict(self.inner.params(), revision="revised", initial=initial.text)
        return (Explanation(initial.text, initial.explainer, dict(initial.params, revision="initial"),
                            usage=initial.usage),
                Explanation(revised, self.name, params, usage=usage))
