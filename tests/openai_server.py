"""A small OpenAI-compatible server on 127.0.0.1 for the API tests and bench/api.py.

POST /v1/completions answers as vLLM does for ``echo`` + ``logprobs``: the prompt's tokens (the embedded model's
tokenizer, with its character offsets), per token its top-``logprobs`` log-probabilities from a plain forward pass
of the model (plus the token itself), and one greedily generated token. POST /v1/chat/completions answers by the
requested model name (see ``_chat``), to exercise explanations, JSON replies, JSON-schema response formats and
failures. ``HITS`` counts requests per (path, model).
"""

from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HITS: dict[tuple[str, str], int] = {}
IN_FLIGHT = {"now": 0, "max": 0}
LOCK = threading.Lock()


def hits(model: str, path: str = "chat") -> int:
    return HITS.get((path, model), 0)


_VOCAB: dict[int, tuple[list[bytes], list[str]]] = {}


def _vocab(tok) -> tuple[list[bytes], list[str]]:
    """Each token's bytes and its text alone (a split character's piece reads U+FFFD), once per tokenizer."""
    from analysis.tokens import vocab_bytes

    if id(tok) not in _VOCAB:
        pieces = vocab_bytes(tok)
        _VOCAB[id(tok)] = pieces, [b.decode("utf-8", errors="replace") for b in pieces]
    return _VOCAB[id(tok)]


def completion_logprobs(subject, prompt: str, k: int) -> dict:
    """The legacy/vLLM completions ``logprobs`` object of ``prompt`` with the prompt echoed, computed by one plain
    forward pass with full log-softmax (independent of the simulators' cached, value-restricted computation).
    Token texts are detokenized incrementally, as vLLM does: a token holding part of a character reads "" and the
    one completing it the character, so ``text_offset`` stays a character offset into the prompt."""
    import codecs

    import torch

    tok = subject.tokenizer
    ids = subject.bos_prefix + tok(prompt, add_special_tokens=False).input_ids
    with torch.inference_mode():
        logp = torch.log_softmax(subject.model(torch.tensor([ids])).logits[0].double(), -1)
    pieces, alone = _vocab(tok)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens, token_lp, top, offsets, at = [], [], [], [], 0
    for i, t in enumerate(ids):
        text = "" if i < len(subject.bos_prefix) else decoder.decode(pieces[t])
        tokens.append(text)
        offsets.append(at)
        at += len(text)
        if i == 0:
            token_lp.append(None)
            top.append(None)
            continue
        row = logp[i - 1]
        best = torch.topk(row, k)
        entry = {alone[j]: float(v) for v, j in zip(best.values.tolist(), best.indices.tolist())}
        entry.setdefault(alone[t], float(row[t]))
        token_lp.append(float(row[t]))
        top.append(entry)
    nxt = int(logp[-1].argmax())
    tokens.append(alone[nxt])
    token_lp.append(float(logp[-1, nxt]))
    top.append({alone[nxt]: float(logp[-1, nxt])})
    offsets.append(len(prompt))
    return {"tokens": tokens, "token_logprobs": token_lp, "top_logprobs": top, "text_offset": offsets,
            "generated": alone[nxt], "n_prompt": len(ids)}


class Handler(BaseHTTPRequestHandler):
    subject = None
    """The model behind /v1/completions (set by ``serve``)."""

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict | str, headers: dict | None = None):
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = "completions" if self.path.endswith("/completions") and "chat" not in self.path else "chat"
        model = req["model"]
        with LOCK:
            HITS[path, model] = HITS.get((path, model), 0) + 1
        if path == "completions":
            return self._completions(req)
        return self._chat(req, model)

    def _completions(self, req: dict):
        if self.subject is None or req.get("model") == "no-logprobs":  # a server that ignores echo/logprobs
            return self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model": req["model"],
                                    "choices": [{"index": 0, "text": "x", "finish_reason": "length",
                                                 "logprobs": None}]})
        with LOCK:  # one forward pass at a time (the model is shared)
            lp = completion_logprobs(self.subject, req["prompt"], int(req.get("logprobs") or 1))
        n = lp.pop("n_prompt")
        generated = lp.pop("generated")
        self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model": req["model"],
                         "choices": [{"index": 0, "text": req["prompt"] + generated, "finish_reason": "length",
                                      "logprobs": lp}],
                         "usage": {"prompt_tokens": n, "completion_tokens": 1, "total_tokens": n + 1}})

    def _chat(self, req: dict, model: str):
        n = hits(model)
        if model == "flaky" and n <= 2:
            return self._send(500, {"error": {"message": "upstream broke"}})
        if model == "ratelimit" and n == 1:
            return self._send(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"})
        if model == "noschema" and "response_format" in req:
            return self._send(400, {"error": {"message": "response_format is not supported"}})
        if model == "slow":
            time.sleep(3)
        if model == "busy":
            with LOCK:
                IN_FLIGHT["now"] += 1
                IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
            time.sleep(0.3)
            with LOCK:
                IN_FLIGHT["now"] -= 1
        user = req["messages"][-1]["content"]
        if "You check explanations of neurons" in req["messages"][0]["content"]:
            return self._judge(req, model, user)
        if model == "garbage":
            content = "I think the activations are mostly high, roughly"
        elif "Revised explanation" in user:
            content = " places in France and their transport, like the Paris metro."
        elif "JSON list" in user:  # a simulation request: fire on tokens containing 'Paris'
            tokens = re.findall(r"^\d+\t(.*)$", user, re.M)
            values = [10 if "Paris" in t else 0 for t in tokens]
            if "response_format" in req:  # the schema's shape, and nothing else
                content = json.dumps({"activations": values})
            else:
                content = "Here you go: " + json.dumps(values)
        else:
            content = " places in France, like Paris. They also appear in lists."
        prompt_tokens = sum(len(m["content"]) for m in req["messages"]) // 4
        completion_tokens = max(1, len(content) // 4)
        self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}})


    def _judge(self, req: dict, model: str, user: str):
        """A detection or fuzzing request: per excerpt P(yes) from the embedded model (``subject``, asked whether
        the excerpt fits the explanation) or, without one, from a keyword rule (an explanation word of 4+ letters in
        the excerpt, in its << >> marks for fuzzing); the answers as a JSON list with chat log-probabilities, except
        for model "no-logprobs" (none), "partial" (one answer short) and "garbage" (no list)."""
        explanation = re.search(r"^Explanation: (.*)$", user, re.M).group(1)
        excerpts = [json.loads(x) for x in re.findall(r"^\d+\. (\".*\")$", user, re.M)]
        fuzz = "marked with <<" in req["messages"][0]["content"]
        probs = []
        for text in excerpts:
            if self.subject is not None:
                with LOCK:
                    probs.append(_yes_probability(self.subject, explanation, text))
            else:
                seen = " ".join(re.findall(r"<<(.*?)>>", text)) if fuzz else text
                words = {w.lower() for w in re.findall(r"[A-Za-z]{4,}", explanation)}
                probs.append(0.9 if any(w in seen.lower() for w in words) else 0.1)
        answers = [int(p > 0.5) for p in probs]
        if model == "partial":
            answers, probs = answers[:-1], probs[:-1]
        if model == "garbage":
            content, tokens = "They all look related to me.", []
        else:
            content = json.dumps({"answers": answers}) if "response_format" in req else json.dumps(answers)
            tokens = [(content[: content.index("[") + 1], None)] + [
                t for i, (a, p) in enumerate(zip(answers, probs))
                for t in ((str(a), p), (", " if i + 1 < len(answers) else "]", None))] + [
                (content[content.rindex("]") + 1:], None)]
        logprobs = None
        if req.get("logprobs") and model != "no-logprobs":
            import math

            def entry(tok, p):
                top = ([{"token": "1", "logprob": math.log(p)}, {"token": "0", "logprob": math.log(1 - p)}]
                       if p is not None else [{"token": tok, "logprob": 0.0}])
                return {"token": tok, "logprob": max(x["logprob"] for x in top), "top_logprobs": top}

            logprobs = {"content": [entry(t, p) for t, p in tokens if t]}
        self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                         "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(content) // 4 + 1,
                                   "total_tokens": len(user) // 4 + len(content) // 4 + 1}})


def _yes_probability(subject, explanation: str, text: str) -> float:
    """The embedded model's P(" yes") / (P(" yes") + P(" no")) after a question whether ``text`` fits."""
    import torch

    tok = subject.tokenizer
    prompt = f"Explanation: {explanation}\nText: {text}\nDoes the text fit the explanation (yes or no)? Answer:"
    ids = tok(prompt, return_tensors="pt").input_ids[:, -400:]
    with torch.no_grad():
        logits = subject.model(ids).logits[0, -1].double()
    yes, no = (tok(w, add_special_tokens=False).input_ids[0] for w in (" yes", " no"))
    return min(1 - 1e-6, max(1e-6, float(torch.softmax(logits[[yes, no]], 0)[0])))


@contextmanager
def serve(subject=None):
    """The server's base URL (``http://127.0.0.1:PORT/v1``) while the block runs; ``subject`` answers completions."""
    handler = type("BoundHandler", (Handler,), {"subject": subject})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
