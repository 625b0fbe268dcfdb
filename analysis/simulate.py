"""Simulators: an explanation and records in, predicted activations (0–10 scale) per token out.

``Simulator.simulate(explanation, records) -> SimResult``; a simulator that cannot produce a prediction for a
record (an unparseable API reply) says so in ``SimResult.error``, never with silent zeros.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch

from analysis.explain import ApiConfig, chat
from analysis.prompts import SIMULATE_SYSTEM, simulate_prefix
from analysis.types import UserError


@dataclass
class SimResult:
    simulated: list[list[float]] | None
    """Per record, per token, on the 0–10 scale; None when the simulation failed."""
    simulator: str
    params: dict = field(default_factory=dict)
    error: str | None = None


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
    unembedding are computed.
    """

    name = "local-all-at-once"

    def __init__(self, subject, batch_size: int = 4):
        self.subject, self.batch_size = subject, batch_size
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

    def _record(self, token_ids: list[int]) -> tuple[list[int], list[int]]:
        """A record's part of the prompt and its activation slots (indices into that part)."""
        ids, slots = [], []
        for t in token_ids:
            ids += [t] + self.tab
            slots.append(len(ids) - 1)  # the model writes the value after the TAB
            ids += self.unknown + self.newline
        return ids + self.end, slots

    def _prompt(self, explanation: str, token_ids: list[int]) -> tuple[list[int], list[int]]:
        """The whole prompt of one record and its slots (what a plain, uncached forward pass would read)."""
        prefix = self._prefix(explanation)
        ids, slots = self._record(token_ids)
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
            batch = [self._record(r.token_ids) for r in records[b : b + self.batch_size]]
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


class ApiJsonSimulator:
    """Logprob-free fallback: ask a chat model for the activations as JSON."""

    name = "api-json"

    def __init__(self, config: ApiConfig):
        self.config = config.check()

    def simulate(self, explanation: str, records: list) -> SimResult:
        params = {"base_url": self.config.base_url, "model": self.config.model}
        out = []
        for r in records:
            numbered = "\n".join(f"{i}\t{t}" for i, t in enumerate(r.tokens))
            user = (f"Explanation of the neuron: the main thing this neuron does is find {explanation}.\n"
                    f"Here are {len(r.tokens)} tokens, one per line as index<TAB>token:\n{numbered}\n"
                    f"Reply with only a JSON list of {len(r.tokens)} integers from 0 to 10, the predicted activation "
                    "of each token in order.")
            try:
                content = chat(self.config, [{"role": "system", "content": SIMULATE_SYSTEM},
                                             {"role": "user", "content": user}], max_tokens=8 * len(r.tokens) + 20)
            except UserError as exc:
                return SimResult(None, self.name, params, error=str(exc))
            values, reason = parse_activation_list(content, len(r.tokens))
            if values is None:
                return SimResult(None, self.name, params, error=f"unparseable reply for record {len(out)}: {reason}")
            out.append(values)
        return SimResult(out, self.name, params)


def parse_activation_list(content: str, n: int) -> tuple[list[float] | None, str]:
    """A JSON list of n numbers in [0, 10] somewhere in ``content`` (also accepts {"activations": [...]})."""
    match = re.search(r"\[[^\[\]]*\]", content, re.S)
    if not match:
        return None, "no JSON list in the reply"
    try:
        values = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg})"
    if len(values) != n:
        return None, f"{len(values)} values for {n} tokens"
    try:
        values = [min(10.0, max(0.0, float(v))) for v in values]
    except (TypeError, ValueError):
        return None, "non-numeric values"
    return values, ""
