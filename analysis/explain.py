"""Explainers: records of a unit in, a one-sentence explanation out. Each records its name and parameters."""

from __future__ import annotations

import os
from dataclasses import dataclass

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

    def complete(self, body: str) -> str:
        """The model's continuation of ``body`` + the lead, as a user turn under the explainer instructions."""
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
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def params(self) -> dict:
        return {"model": self.subject.info.model_id, "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    def explain(self, records: list, max_activation: float) -> Explanation:
        body = explain_prompt(records, max_activation)[len(EXPLAIN_SYSTEM):]
        return Explanation(clean_explanation(self.complete(body)) or "(empty)", self.name, self.params())


@dataclass(frozen=True)
class ApiConfig:
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server...)."""

    base_url: str | None = None
    """e.g. http://127.0.0.1:8000/v1 (needed by the api explainer and simulators)."""
    model: str | None = None
    """The model name at that endpoint."""
    key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 4
    """Retries with exponential backoff on connection errors, 408/409/429 and 5xx (the openai client's own)."""

    def check(self) -> "ApiConfig":
        """Itself, if it names an endpoint and a model; else a UserError saying which options are missing."""
        if not self.base_url or not self.model:
            raise UserError("the api explainer/simulator needs --api-base-url and --api-model (key from $"
                            + self.key_env + ")")
        return self

    def client(self):
        import openai

        self.check()

        key = os.environ.get(self.key_env)
        if not key and "api.openai.com" in self.base_url:
            raise UserError(f"no API key: set ${self.key_env}")
        return openai.OpenAI(base_url=self.base_url, api_key=key or "not-needed", timeout=self.timeout_s,
                             max_retries=self.max_retries)


def chat(config: ApiConfig, messages: list[dict], max_tokens: int) -> str:
    """One chat completion; API failures become UserError with the reason."""
    import openai

    try:
        reply = config.client().chat.completions.create(model=config.model, messages=messages,
                                                        max_tokens=max_tokens, temperature=0)
    except openai.APIConnectionError as exc:
        raise UserError(f"cannot reach the API at {config.base_url}: {exc}") from None
    except openai.APIStatusError as exc:
        raise UserError(f"the API at {config.base_url} answered {exc.status_code}: {str(exc)[:200]}") from None
    content = reply.choices[0].message.content if reply.choices else None
    if not content:
        raise UserError(f"the API at {config.base_url} returned no text")
    return content


class ApiExplainer:
    name = "api"

    def __init__(self, config: ApiConfig):
        self.config = config.check()

    def complete(self, body: str) -> str:
        return chat(self.config, [{"role": "system", "content": EXPLAIN_SYSTEM},
                                  {"role": "user", "content": body.strip() + " ..."}], max_tokens=60)

    def params(self) -> dict:
        return {"base_url": self.config.base_url, "model": self.config.model}

    def explain(self, records: list, max_activation: float) -> Explanation:
        body = explain_prompt(records, max_activation)[len(EXPLAIN_SYSTEM):]
        return Explanation(clean_explanation(self.complete(body)), self.name, self.params())


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
        revised = clean_explanation(self.inner.complete(body)) or initial.text
        params = dict(self.inner.params(), revision="revised", initial=initial.text)
        return (Explanation(initial.text, initial.explainer, dict(initial.params, revision="initial")),
                Explanation(revised, self.name, params))
