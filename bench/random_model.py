"""A model folder with a real model's architecture and tokenizer and random weights (seeded), for speed
measurements where the real weights cannot go (the lent GPU machine takes 64 MiB per call; SmolLM2's weights are
540 MB). Speeds depend on shapes, not weights; quality numbers do not transfer.

    python -m bench.random_model --like data/models/smollm2-135m --out /tmp/rand [--seed 0]
    python -m bench.random_model --like data/models/smollm2-135m --out /tmp/wide --wide

``--wide``: as many MLP neurons as Llama-3.1-8B (458,752) and more: 32 layers x 16,384 neurons on a hidden size of
64 (524,288 neurons, 104 M parameters). The model is small, so a harvest of it measures the harvest's own state.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


WIDE = dict(num_hidden_layers=32, intermediate_size=16_384, hidden_size=64, num_attention_heads=1,
            num_key_value_heads=1, head_dim=64)
"""Llama-3.1-8B's neuron count (32 x 14,336) rounded up, on a tiny hidden size."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", required=True, help="a Hugging Face folder: its config.json and tokenizer files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wide", action="store_true", help="32 layers x 16,384 neurons on a hidden size of 64")
    args = ap.parse_args()
    like, out = Path(args.like), Path(args.out)
    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(like)
    if args.wide:
        for k, v in WIDE.items():
            setattr(config, k, v)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (like / name).exists():
            shutil.copy(like / name, out / name)
    shape = "tokenizer in a wide shape (32 x 16,384 neurons)" if args.wide else "architecture and tokenizer"
    print(f"{out}: {like.name}'s {shape}, random weights (seed {args.seed})")


if __name__ == "__main__":
    main()
