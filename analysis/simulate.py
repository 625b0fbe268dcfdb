"""Simulators: an explanation and records in, predicted activations (0–10 scale) per token out.

``Simulator.simulate(explanation, records) -> SimResult``; a simulator that cannot produce a prediction for a
record (an unparseable API reply) says so in ``SimResult.error``, never with silent zeros.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from analysis.prompts import SIMULATE_SYSTEM, format_tokens, simulate_prefix
from analysis.types import UserError


@dataclass
class SimResult:
    simulated: list[list[float]] | None
    """Per record, per token, on the 0–10 scale; None when the simulation failed."""
    simulator: str
    params: dict = field(default_factory=dict)
    error: str | None = None
    usage: dict | None = None
    """What its API calls cost (``analysis.api.Usage.to_json``); None for a local simulator."""


class TokenLookupSimulator:
    """Predicts each token's mean activation (from the harvest's token table and the explainer's records)."""

    name = "token-lookup"

    def __init__(self, token_means: dict[int, float], default: float, max_activation: float):
        self.token_means, self.default, self.max_activation = token_means, default, max_activation

    def simulate(self, explanation: str, records: list) -> SimResult:
        m = self.max_activation if self.max_activation > 0 else 1.0
        sim = [[min(10.0, 10.0 * max(self.token_means.get(t, self.default), 0.0) / m) for t in r.token_ids]
               for r in records]
        return SimResult(sim, self.name, {"n_tokens_known": len(self.token_means)})


class LocalAllAtOnceSimulator:
    """The paper's all-at-once simulation with a local causal LM whose logits we hold.

    One prompt per record, every activation written as 'unknown'; at each activation slot (the position after
    a token's TAB) the next-token probabilities of the values are renormalised over the values and their
    expectation is the prediction. Values are the numbers 0..10 that the tokenizer writes as one token (SmolLM2
    writes 10 as '1','0': there the values are 0..9, rescaled by 10/9). The shared prompt prefix runs once;
    batches of records share one forward pass over its cached keys/values; only the value rows of the
    unembedding are computed. Records of another model (``record_model``) are written by their token strings, each
    tokenized by the simulator (the records' ids belong to the other vocabulary).
    """

    name = "local-all-at-once"

    def __init__(self, subject, batch_size: int = 4, record_model: str | None = None):
        self.subject, self.batch_size = subject, batch_size
        self.same_vocab = record_model in (None, subject.info.model_id)
        self.values, self.value_ids = [], []
        for v in range(11):
            ids = subject.tokenize(str(v))
            if len(ids) == 1:
                self.values.append(float(v))
                self.value_ids.append(ids[0])
        if len(self.values) < 2:
            raise UserError(f"{subject.info.name}'s tokenizer has no single-token numbers: cannot simulate")
        self.scale = 10.0 / max(self.values)
        tok = subject.tokenize
        self.tab, self.unknown, self.newline, self.end = tok("\t"), tok("unknown"), tok("\n"), tok("<end>\n")

    def _prefix(self, explanation: str) -> list[int]:
        return self.subject.bos_prefix + self.subject.tokenize(simulate_prefix(explanation) + "<start>\n")

    def _token_ids(self, record) -> list[list[int]]:
        if self.same_vocab:
            return [[t] for t in record.token_ids]
        return [self.subject.tokenize(t) for t in record.tokens]

    def _record(self, tokens: list[list[int]]) -> tuple[list[int], list[int]]:
        """A record's part of the prompt (each token's ids) and its activation slots (indices into that part)."""
        ids, slots = [], []
        for t in tokens:
            ids += t + self.tab
            slots.append(len(ids) - 1)  # the model writes the value after the TAB
            ids += self.unknown + self.newline
        return ids + self.end, slots

    def _prompt(self, explanation: str, record) -> tuple[list[int], list[int]]:
        """The whole prompt of one record and its slots (what a plain, uncached forward pass would read)."""
        prefix = self._prefix(explanation)
        ids, slots = self._record(self._token_ids(record))
        return prefix + ids, [len(prefix) + s for s in slots]

    @torch.inference_mode()
    def simulate(self, explanation: str, records: list) -> SimResult:
        import copy

        device = self.subject.device
        base = self.subject.base()
        w = self.subject.model.get_output_embeddings().weight[self.value_ids].float()  # [V, d]
        values = torch.tensor(self.values, device=device) * self.scale
        # the instructions, few-shot neurons and explanation are the same for every record: run them once and
        # reuse their key/value cache for each batch of records
        prefix = self._prefix(explanation)
        cache = base(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
        out: list[list[float]] = []
        for b in range(0, len(records), self.batch_size):
            batch = [self._record(self._token_ids(r)) for r in records[b : b + self.batch_size]]
            enc = self.subject.encode([ids for ids, _ in batch], bos=False)  # the prefix is in the cache
            B = len(batch)
            mask = torch.cat([torch.ones((B, len(prefix)), dtype=torch.long), enc.attention_mask], 1)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(B)
            hidden = base(input_ids=enc.input_ids.to(device), attention_mask=mask.to(device), past_key_values=past,
                          use_cache=True).last_hidden_state  # [B, T, d], final norm applied
            for i, (_, slots) in enumerate(batch):
                logits = hidden[i, slots].float() @ w.T  # [tokens, values]
                out.append((torch.softmax(logits, dim=-1) @ values).tolist())
        return SimResult(out, self.name, {"model": self.subject.info.model_id, "values": len(self.values),
                                          "prompt": "all-at-once, 2 few-shot neurons, shared prefix cache"})


def record_prompt(explanation: str, tokens: list[str]) -> tuple[str, list[int]]:
    """The all-at-once prompt of one record as text, and the character offset of each token's "unknown" (where
    the model writes that token's value): the text the local simulator tokenizes piece by piece."""
    prefix = simulate_prefix(explanation)
    text = prefix + format_tokens(tokens, None)
    offsets, at = [], len(prefix) + len("<start>\n")
    for t in tokens:
        offsets.append(at + len(t) + 1)
        at += len(t) + len("\tunknown\n")
    assert all(text.startswith("unknown", o) for o in offsets)
    return text, offsets


class ApiAllAtOnceSimulator:
    """The paper's all-at-once simulation over an OpenAI-compatible completions endpoint that echoes the prompt's
    log-probabilities (vLLM; the legacy OpenAI API did): one request per record, the prompt of
    ``local-all-at-once`` as text; at each token's "unknown" the top log-probabilities of the values 0–10 are
    renormalised over the values and their expectation is the prediction. Values are the numbers the server's
    tokenizer writes as one token: if it writes the few-shot 10s as '1','0' the values are 0..9, rescaled by
    10/9 (as the local simulator does).

    Only the top ``--api-logprobs`` alternatives come back per position, so a value outside them counts as
    probability 0 (as in the paper, which asked for 15): the params count the slots where some value was missing
    (``incomplete_slots``) and where all were (``empty_slots``, predicted 0). With every value in the top, this
    equals ``local-all-at-once`` on the same model; a small model that mostly predicts "unknown" needs a large
    top (hundreds)."""

    name = "api-all-at-once"

    def __init__(self, client):
        self.client = client

    def cost(self, explanation: str, record) -> tuple[int, int]:
        """(prompt characters, max completion tokens) of the request for one record (for the plan line)."""
        return len(record_prompt(explanation, list(record.tokens))[0]), 1

    def _one(self, explanation: str, tokens: list[str]) -> tuple[list[float], Counter, object]:
        """One record's predictions, its slot counts and the call's usage (UserError when the slots cannot be
        found in the server's tokens)."""
        text, offsets = record_prompt(explanation, tokens)
        reply = self.client.echo(text)
        index = {o: i for i, o in enumerate(reply.offsets) if reply.tokens[i]}
        top_value = 10 if "10" in reply.tokens else 9
        values = {str(v): float(v) for v in range(top_value + 1)}
        out, counts = [], Counter()
        for k, o in enumerate(offsets):
            i = index.get(o)
            if i is None or not (reply.tokens[i].startswith("unknown") or "unknown".startswith(reply.tokens[i])):
                raise UserError(f"the server's tokens do not start a token at the 'unknown' after token {k} "
                                f"({tokens[k]!r}): its tokenizer joins it with the TAB before it")
            found = {values[t]: lp for t, lp in (reply.top_logprobs[i] or {}).items() if t in values}
            counts["incomplete_slots"] += len(found) < len(values)
            if not found:
                counts["empty_slots"] += 1
                out.append(0.0)
                continue
            p = torch.softmax(torch.tensor(list(found.values()), dtype=torch.float64), 0)
            out.append(float(p @ torch.tensor(list(found), dtype=torch.float64)) * 10.0 / top_value)
        return out, counts, reply.usage

    def simulate(self, explanation: str, records: list) -> SimResult:
        from analysis.api import BudgetReached, Usage

        params = {"base_url": self.client.config.base_url, "model": self.client.config.model,
                  "logprobs": self.client.config.logprobs, "prompt": "all-at-once, 2 few-shot neurons"}
        out, counts, usage = [], Counter(), Usage()
        for r in records:
            try:
                values, seen, used = self._one(explanation, list(r.tokens))
            except BudgetReached:
                raise
            except UserError as exc:
                return SimResult(None, self.name, params, error=f"record {len(out)}: {exc}", usage=usage.to_json())
            out.append(values)
            counts, usage = counts + seen, usage + used
        return SimResult(out, self.name, dict(params, **counts), usage=usage.to_json())


def activations_schema(n: int) -> dict:
    """The JSON schema of an api-json reply for n tokens: {"activations": [n integers from 0 to 10]}."""
    return {"type": "object", "additionalProperties": False, "required": ["activations"],
            "properties": {"activations": {"type": "array", "minItems": n, "maxItems": n,
                                           "items": {"type": "integer", "minimum": 0, "maximum": 10}}}}


class ApiJsonSimulator:
    """Logprob-free fallback: ask a chat model for the activations as JSON, in the server's JSON-schema response
    format where it has one (else parsed out of the text)."""

    name = "api-json"

    def __init__(self, client):
        self.client = client

    @staticmethod
    def _messages(explanation: str, tokens: list[str]) -> list[dict]:
        numbered = "\n".join(f"{i}\t{t}" for i, t in enumerate(tokens))
        user = (f"Explanation of the neuron: the main thing this neuron does is find {explanation}.\n"
                f"Here are {len(tokens)} tokens, one per line as index<TAB>token:\n{numbered}\n"
                f"Reply with only a JSON list of {len(tokens)} integers from 0 to 10, the predicted activation "
                "of each token in order.")
        return [{"role": "system", "content": SIMULATE_SYSTEM}, {"role": "user", "content": user}]

    def cost(self, explanation: str, record) -> tuple[int, int]:
        """(prompt characters, max completion tokens) of the request for one record (for the plan line)."""
        return sum(len(m["content"]) for m in self._messages(explanation, record.tokens)), 8 * len(record.tokens) + 20

    def simulate(self, explanation: str, records: list) -> SimResult:
        from analysis.api import BudgetReached, Usage

        params = {"base_url": self.client.config.base_url, "model": self.client.config.model}
        out, usage, formats = [], Usage(), set()
        for r in records:
            try:
                reply = self.client.chat(self._messages(explanation, r.tokens), max_tokens=8 * len(r.tokens) + 20,
                                         schema=activations_schema(len(r.tokens)))
            except BudgetReached:
                raise
            except UserError as exc:
                return SimResult(None, self.name, params, error=str(exc), usage=usage.to_json())
            usage, formats = usage + reply.usage, formats | {reply.format}
            values, reason = parse_activation_list(reply.text, len(r.tokens))
            if values is None:
                return SimResult(None, self.name, dict(params, reply_format="/".join(sorted(formats))),
                                 error=f"unparseable reply for record {len(out)}: {reason}", usage=usage.to_json())
            out.append(values)
        return SimResult(out, self.name, dict(params, reply_format="/".join(sorted(formats))), usage=usage.to_json())


def json_list(content: str, n: int, what: str) -> tuple[list | None, str]:
    """The first flat JSON list in ``content`` (also inside an object) if it has ``n`` items, else (None, why);
    ``what``: "<items> for <n> <things>" as the message names them, e.g. "values for {n} tokens"."""
    match = re.search(r"\[[^\[\]]*\]", content, re.S)
    if not match:
        return None, "no JSON list in the reply"
    try:
        values = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg})"
    if len(values) != n:
        return None, f"{len(values)} {what.format(n=n)}"
    return values, ""


def parse_activation_list(content: str, n: int) -> tuple[list[float] | None, str]:
    """A JSON list of n numbers in [0, 10] somewhere in ``content`` (also accepts {"activations": [...]})."""
    values, why = json_list(content, n, "values for {n} tokens")
    if values is None:
        return None, why
    try:
        values = [min(10.0, max(0.0, float(v))) for v in values]
    except (TypeError, ValueError):
        return None, "non-numeric values"
    return values, ""
