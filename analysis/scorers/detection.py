"""Detection and fuzzing (API): a language model reads an explanation and judges examples of the unit.

Detection: the examples are the unit's activating and non-activating ones (``analysis.splits
.classification_examples``), shuffled (seeded) and shown in batches of ``batch`` numbered excerpts; the model says
for each, 1 or 0, whether the unit as explained would fire somewhere in it. Fuzzing: each activating example shown
twice, once with the tokens the unit fires on (a tenth of its max or more) marked ``<<like this>>`` and once with
as many other tokens marked; the model says whether the marks fit the explanation. The label is the truth
(activating, or correctly marked); the verdict its answer; where the endpoint returns log-probabilities of the
answers, P("1") is the prediction AUROC ranks.

A batch whose reply cannot be read (no list, the wrong length, not 0/1) gives its examples no verdict: counted in
the result's notes, never a crash. An API error in one batch does the same; a budget stop ends the scoring.
"""

from __future__ import annotations

import json
import math
import random

from analysis.scorers import ScorerResult, classification, failed
from analysis.splits import classification_examples
from analysis.types import UserError

BATCH = 5
"""Examples per request."""
_TASK = {
    "detection": "For each excerpt, decide whether the neuron, as the explanation describes it, would fire "
                 "anywhere in that excerpt.",
    "fuzz": "In each excerpt some tokens are marked with << and >>. For each excerpt, decide whether the marked "
            "tokens are the ones the explanation says the neuron fires on.",
}


def _system(scorer: str) -> str:
    return ("You check explanations of neurons in a language model. You get an explanation of one neuron and a "
            f"numbered list of text excerpts. {_TASK[scorer]} Reply with a JSON list of 0s and 1s, one per excerpt, "
            "in order (1 means yes), and nothing else.")


def marked(tokens: list[str], marks: set[int]) -> str:
    """The excerpt's text with the tokens at ``marks`` inside << >>."""
    return "".join(f"<<{t}>>" if i in marks else t for i, t in enumerate(tokens))


def fuzz_items(rec, rng: random.Random) -> list[dict]:
    """Each activating example marked right (label 1: its tokens at a tenth of the max or more) and wrong (label
    0: as many of its other tokens, drawn by ``rng``)."""
    activating, _non = classification_examples(rec)
    out = []
    for r in activating:
        right = {i for i, a in enumerate(r.activations) if a >= rec.stats.max / 10}
        others = [i for i in range(len(r.tokens)) if i not in right]
        wrong = set(rng.sample(others, min(len(right), len(others))))
        out.append({"window_id": r.window_id, "label": 1, "text": marked(list(r.tokens), right)})
        if wrong:
            out.append({"window_id": r.window_id, "label": 0, "text": marked(list(r.tokens), wrong)})
    return out


def detection_items(rec) -> list[dict]:
    activating, non = classification_examples(rec)
    return ([{"window_id": r.window_id, "label": 1, "text": "".join(r.tokens)} for r in activating] +
            [{"window_id": r.window_id, "label": 0, "text": "".join(r.tokens)} for r in non])


def answers_schema(n: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["answers"], "properties": {
        "answers": {"type": "array", "minItems": n, "maxItems": n, "items": {"type": "integer", "enum": [0, 1]}}}}


def parse_answers(content: str, n: int) -> tuple[list[int] | None, str]:
    """A JSON list of n 0/1 answers in ``content`` (also {"answers": [...]}); (None, why) otherwise."""
    from analysis.simulate import json_list

    values, why = json_list(content, n, "answers for {n} excerpts")
    if values is None:
        return None, why
    if any(v not in (0, 1) or isinstance(v, bool) for v in values):
        return None, "answers other than 0 and 1"
    return [int(v) for v in values], ""


def answer_probabilities(logprobs: list | None, n: int) -> list[float] | None:
    """P("1") of each of the ``n`` answers from the reply's per-token log-probabilities: the generated tokens that
    are an answer ("0" or "1"), in order, each renormalised over the two (an alternative not in the top counts
    as 0); None without log-probabilities or when the answers cannot be found among the tokens."""
    if not logprobs:
        return None
    out = []
    for token, top in logprobs:
        if token.strip() in ("0", "1"):
            p = {a.strip(): math.exp(lp) for a, lp in top.items() if a.strip() in ("0", "1")}
            p.setdefault(token.strip(), 1e-12)
            out.append(p.get("1", 0.0) / (p.get("1", 0.0) + p.get("0", 0.0)))
    return out if len(out) == n else None


def _messages(scorer: str, explanation: str, texts: list[str]) -> list[dict]:
    body = "\n".join(f"{i + 1}. {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(texts))
    return [{"role": "system", "content": _system(scorer)},
            {"role": "user", "content": f"Explanation: {explanation.strip()}\n\nExcerpts:\n{body}\n\n"
                                        f"Answers ({len(texts)}), as a JSON list:"}]


class JudgeScorer:
    """Detection or fuzzing over an ``analysis.api.ApiClient`` (its budgets, reply cache and usage)."""

    def __init__(self, scorer: str, client, batch: int = BATCH, seed: int = 0):
        if scorer not in _TASK:
            raise UserError(f"unknown judged scorer {scorer!r}: detection or fuzz")
        self.scorer, self.client, self.batch, self.seed = scorer, client, batch, seed

    @property
    def params(self) -> dict:
        return {"base_url": self.client.config.base_url, "model": self.client.config.model, "batch": self.batch,
                "seed": self.seed, "examples": "classification_examples"}

    def items(self, explanation: str, rec) -> list[dict]:
        rng = random.Random(f"{self.seed}:{self.scorer}:{rec.unit}")
        items = fuzz_items(rec, rng) if self.scorer == "fuzz" else detection_items(rec)
        rng.shuffle(items)
        return items

    def cost(self, explanation: str, rec) -> list[tuple[int, int]]:
        """(prompt characters, max completion tokens) of each request (for the plan line)."""
        items = self.items(explanation, rec)
        return [(sum(len(m["content"]) for m in _messages(self.scorer, explanation,
                                                           [it["text"] for it in items[b:b + self.batch]])),
                 4 * self.batch + 16) for b in range(0, len(items), self.batch)]

    def score(self, explanation: str, rec) -> ScorerResult:
        from analysis.api import ApiError, BudgetReached, Usage

        if not explanation.strip():
            return failed(self.scorer, self.params, "the explanation is empty")
        items, usage, notes, no_logprobs = self.items(explanation, rec), Usage(), [], 0
        for b in range(0, len(items), self.batch):
            part = items[b:b + self.batch]
            try:
                reply = self.client.chat(_messages(self.scorer, explanation, [it["text"] for it in part]),
                                         4 * len(part) + 16, answers_schema(len(part)), logprobs=True)
            except BudgetReached:
                raise
            except ApiError as exc:
                notes.append(f"batch {b // self.batch + 1}: {exc}")
                continue
            usage = usage + reply.usage
            verdicts, why = parse_answers(reply.text, len(part))
            if verdicts is None:
                notes.append(f"batch {b // self.batch + 1}: unreadable reply ({why})")
                continue
            probs = answer_probabilities(reply.logprobs, len(part))
            no_logprobs += probs is None
            for it, v, p in zip(part, verdicts, probs or [None] * len(part)):
                it["verdict"], it["prediction"] = v, None if p is None else round(p, 6)
        examples = [{"window_id": it["window_id"], "label": it["label"], "verdict": it.get("verdict"),
                     "prediction": it.get("prediction"), "shown": it["text"]} for it in items]
        if not any(e["verdict"] is not None for e in examples):
            return ScorerResult(self.scorer, self.params, None, None, None, examples=examples, notes=notes,
                                error="; ".join(notes) or "no examples", usage=usage.to_json())
        return classification(self.scorer, self.params, examples, self.seed, usage.to_json(), notes)
