"""OpenAI-compatible endpoints (OpenAI, vLLM, llama.cpp server, Ollama, ...): one client for the api explainer and
simulators. It counts every call's tokens, stops at a budget, answers a repeated request from its reply cache
(``ReplyCache``, files beside the database) without sending it, and turns API failures into ``UserError``s that say why.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.types import UserError


class ReplyCache:
    """API replies kept on disk, so a rerun or a second pass pays nothing for a request it already made: one JSON
    file per request, named by the hash of everything that decides the reply (endpoint model, prompt or messages,
    parameters), in a folder beside the database (``<db>.replies/``). Files are written whole (a temporary file
    renamed into place), so concurrent writers and an interrupted run leave either a complete reply or none."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def beside(cls, db: Path) -> "ReplyCache":
        return cls(Path(str(db) + ".replies"))

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, reply: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{id(reply)}.tmp")
        tmp.write_text(json.dumps(reply, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json")) if self.folder.exists() else 0


@dataclass(frozen=True)
class ApiConfig:
    """An OpenAI-compatible endpoint and what a run may spend on it."""

    base_url: str | None = None
    """e.g. http://127.0.0.1:8000/v1 (needed by the api explainer and simulators)."""
    model: str | None = None
    """The model name at that endpoint."""
    key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key."""
    timeout_s: float = 60.0
    """Seconds per request."""
    max_retries: int = 4
    """Retries with exponential backoff on connection errors, 408/409/429 and 5xx (the openai client's own)."""
    max_requests: int | None = None
    """Stop the run cleanly once this many requests were sent (replies from the cache are free); rerun to go on."""
    max_tokens_total: int | None = None
    """Stop the run cleanly once the sent requests used this many prompt + completion tokens (as the server
    reports them; requests in flight finish, so a run can pass it by up to --api-concurrency requests)."""
    logprobs: int = 20
    """Top log-probabilities per prompt token asked of a completions endpoint (api-all-at-once; vLLM allows 20
    unless started with a larger --max-logprobs)."""
    reply_cache: bool = True
    """Keep replies beside the database and answer a repeated request from there."""

    def check(self) -> "ApiConfig":
        """Itself, if it names an endpoint and a model; else a UserError saying which options are missing."""
        if not self.base_url or not self.model:
            raise UserError("the api explainer/simulator needs --api-base-url and --api-model (key from $"
                            + self.key_env + ")")
        for name in ("max_requests", "max_tokens_total"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--api-{name.replace('_', '-')} must be 0 or more, not {value}")
        if self.logprobs < 1:
            raise UserError(f"--api-logprobs must be at least 1, not {self.logprobs}")
        return self

    def budget_text(self) -> str:
        parts = [f"{self.max_requests} requests" if self.max_requests is not None else "",
                 f"{self.max_tokens_total} tokens" if self.max_tokens_total is not None else ""]
        return " / ".join(p for p in parts if p) or "no budget"


@dataclass
class Usage:
    """What calls cost: requests sent and the tokens the server counted for them; ``cached`` calls were answered
    by the reply cache and cost nothing."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return (f"{self.requests} request(s), {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
                f"tokens" + (f", {self.cached} from the reply cache" if self.cached else ""))


CHARS_PER_TOKEN = 3
"""For the plan line's estimate of prompt tokens (the server's tokenizer is not ours to run): our prompts are
mostly token<TAB>value lines, ~3 characters per token (bench/api.py: 4 underestimated SmolLM2's count by 19 %)."""


def plan_line(n_units: int, unit: str, calls: list[tuple[int, int]], config: ApiConfig) -> str:
    """What a run will ask of the endpoint: ``calls`` holds (prompt characters, max completion tokens) per
    request."""
    prompt = sum(c for c, _ in calls) / CHARS_PER_TOKEN
    completion = sum(m for _, m in calls)
    per = len(calls) / max(n_units, 1)
    return (f"plan: {n_units} {unit}(s) × {per:.3g} call(s) = {len(calls):,} request(s) to {config.model} at "
            f"{config.base_url}, ≈ {prompt:,.0f} prompt tokens (at {CHARS_PER_TOKEN} characters per token) + ≤ "
            f"{completion:,} completion tokens; budget: {config.budget_text()}; replies already in the reply cache "
            "cost nothing")


class BudgetReached(UserError):
    """The run's --api-max-requests / --api-max-tokens-total is spent: stop cleanly, keep what is done."""


class ApiError(UserError):
    def __init__(self, message: str, status: int | None = None, cached: bool = False):
        super().__init__(message)
        self.status, self.cached = status, cached
        """The HTTP status (None: no answer) and whether this refusal came from the reply cache."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    usage: Usage
    format: str
    """How the reply was asked for: "json_schema" (the server's structured output) or "text"."""
    logprobs: list | None = None
    """With ``chat(logprobs=True)``: per generated token (its text, {alternative: log-probability} of its top
    alternatives); None where the server sent none."""


@dataclass(frozen=True)
class EchoReply:
    """A completions reply with the prompt echoed: per prompt token its text, character offset in the prompt and
    top log-probabilities (None where the server gives none, e.g. the first token)."""

    tokens: list[str]
    offsets: list[int]
    top_logprobs: list[dict[str, float] | None]
    usage: Usage


REJECTED = (400, 422, 501)
"""Statuses by which a server refuses a request it does not support (a JSON-schema response format)."""


class ApiClient:
    """Sends requests to one endpoint; thread-safe (one client is shared by a run's concurrent workers)."""

    def __init__(self, config: ApiConfig, cache=None):
        self.config = config.check()
        self.cache = cache if config.reply_cache else None
        self.spent = Usage()
        """Everything this client's calls cost so far (all threads)."""
        self._lock = threading.Lock()
        self._client = None
        self._schema_ok = True

    def _openai(self):
        import openai

        with self._lock:
            if self._client is None:
                key = os.environ.get(self.config.key_env)
                if not key and "api.openai.com" in self.config.base_url:
                    raise UserError(f"no API key: set ${self.config.key_env}")
                self._client = openai.OpenAI(base_url=self.config.base_url, api_key=key or "not-needed",
                                             timeout=self.config.timeout_s, max_retries=self.config.max_retries)
            return self._client

    def _reserve(self) -> None:
        """Count one request about to be sent, or raise BudgetReached if the budget is spent."""
        c = self.config
        with self._lock:
            if c.max_requests is not None and self.spent.requests >= c.max_requests:
                raise BudgetReached(f"API budget reached: {self.spent.requests} request(s) sent "
                                    f"(--api-max-requests {c.max_requests})")
            if c.max_tokens_total is not None and self.spent.tokens >= c.max_tokens_total:
                raise BudgetReached(f"API budget reached: {self.spent.tokens:,} tokens used "
                                    f"(--api-max-tokens-total {c.max_tokens_total:,})")
            self.spent.requests += 1

    def _request(self, kind: str, request: dict, send, keep_refusal: bool = False) -> tuple[dict, Usage]:
        """The reply to ``request`` (from the cache, or ``send()``'s, then cached) and what it cost; with
        ``keep_refusal``, a refusal (``REJECTED``) is cached too, so it is not asked again."""
        import openai

        key = ReplyCache.key({"kind": kind, **request})
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            with self._lock:
                self.spent.cached += 1
            if "rejected" in hit:
                raise ApiError(hit["message"], hit["rejected"], cached=True)
            return hit, Usage(cached=1)
        self._reserve()
        where = self.config.base_url
        try:
            reply = send(self._openai())
        except openai.APIConnectionError as exc:
            raise ApiError(f"cannot reach the API at {where}: {exc}") from None
        except openai.APIStatusError as exc:
            message = f"the API at {where} answered {exc.status_code}: {str(exc)[:200]}"
            if keep_refusal and exc.status_code in REJECTED and self.cache is not None:
                self.cache.put(key, {"rejected": exc.status_code, "message": message})
            raise ApiError(message, exc.status_code) from None
        usage = Usage(requests=1, prompt_tokens=reply["usage"][0], completion_tokens=reply["usage"][1])
        with self._lock:
            self.spent.prompt_tokens += usage.prompt_tokens
            self.spent.completion_tokens += usage.completion_tokens
        if self.cache is not None:
            self.cache.put(key, reply)
        return reply, usage

    @staticmethod
    def _tokens(reply) -> list[int]:
        u = getattr(reply, "usage", None)
        return [getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0]

    def chat(self, messages: list[dict], max_tokens: int, schema: dict | None = None, logprobs: bool = False
             ) -> ChatReply:
        """One chat completion at temperature 0. With ``schema`` (a JSON schema), ask for a reply in that shape
        where the server supports it; a server that refuses the response format is asked again without it (and
        not asked with it again by this client). With ``logprobs``, ask for each generated token's top
        ``--api-logprobs`` alternatives (``ChatReply.logprobs``; None if the server sends none)."""
        request = {"model": self.config.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if logprobs:
            request.update(logprobs=True, top_logprobs=min(self.config.logprobs, 20))
        spent = Usage()
        if schema is not None and self._schema_ok:
            structured = dict(request, response_format={
                "type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}})
            try:
                text, usage, lps = self._chat(structured, keep_refusal=True)
                return ChatReply(text, usage, "json_schema", lps)
            except ApiError as exc:
                if exc.status not in REJECTED:
                    raise
                self._schema_ok = False
                spent = Usage(cached=1) if exc.cached else Usage(requests=1)  # the refused request
        text, usage, lps = self._chat(request)
        return ChatReply(text, spent + usage, "text", lps)

    def _chat(self, request: dict, keep_refusal: bool = False) -> tuple[str, Usage, list | None]:
        def send(client):
            reply = client.chat.completions.create(**request)
            text = reply.choices[0].message.content if reply.choices else None
            lp = getattr(reply.choices[0], "logprobs", None) if reply.choices else None
            content = getattr(lp, "content", None) if lp is not None else None
            lps = [[t.token, {a.token: a.logprob for a in (t.top_logprobs or [])} or {t.token: t.logprob}]
                   for t in content] if content else None
            return {"text": text, "usage": self._tokens(reply), "logprobs": lps}

        reply, usage = self._request("chat", request, send, keep_refusal)
        if not reply["text"]:
            raise ApiError(f"the API at {self.config.base_url} returned no text")
        return reply["text"], usage, reply.get("logprobs")

    def echo(self, prompt: str) -> EchoReply:
        """The prompt's own tokens with their top log-probabilities (completions with ``echo`` and ``logprobs``;
        one token is generated, as vLLM needs, and left out)."""
        request = {"model": self.config.model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True,
                   "logprobs": self.config.logprobs}

        def send(client):
            reply = client.completions.create(**request)
            lp = reply.choices[0].logprobs if reply.choices else None
            if lp is None or not lp.tokens or lp.top_logprobs is None or lp.text_offset is None:
                raise ApiError(f"the API at {self.config.base_url} returned no prompt log-probabilities: it needs "
                               "a completions endpoint with echo + logprobs (vLLM does; llama.cpp and Ollama do not: "
                               "use --simulator api-json there)")
            return {"tokens": list(lp.tokens), "offsets": list(lp.text_offset),
                    "top": [dict(t) if t else None for t in lp.top_logprobs], "usage": self._tokens(reply)}

        reply, usage = self._request("echo", request, send)
        n = sum(1 for o in reply["offsets"] if o < len(prompt))  # the prompt's tokens, not the generated one
        return EchoReply(reply["tokens"][:n], reply["offsets"][:n], reply["top"][:n], usage)
