"""Tiny backbones built from config, for fast offline tests.

Each tiny model has the real architecture class of its family (BERT, Llama with
grouped-query attention, T5 v1.1, CLIP ViT) with a few thousand parameters, random but seeded
weights, and a byte-level tokenizer built in code, so nothing is downloaded.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from spt.errors import SptError

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3; bytes follow
TINY_ARCHS = {"bert": "encoder", "llama": "decoder", "t5": "encoder-decoder", "clip": "clip"}
# CLIP's BPE has start/end-of-text as its two highest ids (OpenAI's checkpoints pool the text at
# the argmax id, the end of text); the tiny CLIP tokenizer keeps that order.
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (4 specials + 256 bytes, no merges).

    Special tokens follow the family: BERT-style ``<s> x </s>``, Llama-style ``<s> x``,
    T5-style ``x </s>``, CLIP-style ``<|startoftext|> x <|endoftext|>`` (those two last in the
    vocabulary, the end of text doubling as padding).
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    if family == "clip":
        for name in CLIP_SPECIALS:
            vocab[name] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if family == "clip":
        sot, eot = CLIP_SPECIALS
        tok.post_processor = processors.TemplateProcessing(
            single=f"{sot} $A {eot}",
            pair=f"{sot} $A {eot} $B {eot}",
            special_tokens=[(sot, vocab[sot]), (eot, vocab[eot])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=sot, eos_token=eot, pad_token=eot, unk_token="<unk>"
        )
    single = {"bert": "<s> $A </s>", "llama": "<s> $A", "t5": "$A </s>"}[family]
    tok.post_processor = processors.TemplateProcessing(
        single=single,
        pair=single.replace("$A", "$A $B") if family != "bert" else "<s> $A </s> $B </s>",
        special_tokens=[("<s>", 1), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        cls_token="<s>" if family == "bert" else None,
        sep_token="</s>" if family == "bert" else None,
    )


def tiny_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP's preprocessing (resize the short side, centre crop, CLIP mean/std) at
    ``image_size`` pixels."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def tiny_config(family: str, hidden: int = 32, layers: int = 2, heads: int = 4):
    vocab = len(SPECIALS) + 256
    if family == "clip":  # ViT with 8x8 patches on 32x32 images (CIFAR size)
        tower = dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
        )
        return CLIPConfig(
            text_config=dict(
                tower,
                vocab_size=vocab + 2,
                max_position_embeddings=77,
                bos_token_id=vocab,
                eos_token_id=2,
                pad_token_id=vocab + 1,
            ),
            vision_config=dict(tower, image_size=32, patch_size=8),
            projection_dim=hidden // 2,
        )
    if family == "bert":
        return BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=512,
            pad_token_id=0,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            intermediate_size=2 * hidden,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        )
    if family == "t5":
        return T5Config(
            vocab_size=vocab,
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=2 * hidden,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
        )
    raise SptError(f"unknown tiny family {family!r}: choose one of {sorted(TINY_ARCHS)}")


def tiny_model(family: str, seed: int = 0, **sizes) -> torch.nn.Module:
    """A randomly initialised (seeded) model of ``family`` in eval mode."""
    config = tiny_config(family, **sizes)
    cls = {
        "bert": BertModel,
        "llama": LlamaForCausalLM,
        "t5": T5ForConditionalGeneration,
        "clip": CLIPModel,
    }[family]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()
