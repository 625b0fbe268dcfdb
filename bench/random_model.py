"""A model folder with a real model's architecture and tokenizer and random weights (seeded), for speed
measurements where the real weights cannot go (the lent GPU machine takes 64 MiB per call; SmolLM2's weights are
540 MB). Speeds depend on shapes, not weights; quality numbers do not transfer.

    python -m bench.random_model --like data/models/smollm2-135m --out /tmp/rand [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", required=True, help="a Hugging Face folder: its config.json and tokenizer files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    like, out = Path(args.like), Path(args.out)
    torch.manual_seed(args.seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(like)).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (like / name).exists():
            shutil.copy(like / name, out / name)
    print(f"{out}: {like.name}'s architecture and tokenizer, random weights (seed {args.seed})")


if __name__ == "__main__":
    main()
