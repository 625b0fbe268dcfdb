"""Small builders for tests: a tiny trained tokenizer and tiny random-weight models of four families."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Neurons in language models respond to tokens, numbers like 1 2 3 and punctuation!",
    "<script>alert(1)</script> and <img src=x onerror=alert(2)> are text, not markup.",
    "In 1905 Einstein published four papers; the third was on special relativity.",
]


def tiny_tokenizer(bos: bool = False, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences (offline, a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_TEXT * 3, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_config(kind: str, vocab_size: int, n_layers: int = 3):
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=n_layers, n_head=4)
    if kind == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "gemma":
        return Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                                sliding_window=8)
    if kind == "neox":
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                             num_attention_heads=4, max_position_embeddings=128)
    raise ValueError(kind)


def tiny_model_folder(folder: Path, kind: str, bos: bool = False, n_layers: int = 3, seed: int = 0,
                      vocab_size: int = 300) -> Path:
    """Save a tiny random-weight model of ``kind`` with the tiny tokenizer into ``folder``."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(bos=bos, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = tiny_config(kind, vocab_size=len(tokenizer), n_layers=n_layers)
    config.attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    # random init is small; widen it so activations have a real spread
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
