"""Word-level tokenizer for the shapes world, built offline from ``shapes_world.vocabulary()``.

Specials (fixed ids): <pad>=0, <unk>=1, <bos>=2, <eos>=3. Every encoding is ``<bos> words... <eos>``; pipelines pad
to ``model_max_length`` (20) on the right. The unconditional (CFG) prompt is the empty string "" -> ``<bos> <eos>``.
"""
from __future__ import annotations

from pathlib import Path

from . import configs

PUNCTUATION = [",", "."]


def build_tokenizer(words: list[str] | None = None):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if words is None:
        from benchmark import shapes_world as sw

        words = sw.vocabulary()
    vocab: dict[str, int] = {}
    for w in list(configs.SPECIALS) + PUNCTUATION + sorted({w.lower() for w in words}):
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=configs.UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{configs.BOS} $A {configs.EOS}",
        pair=f"{configs.BOS} $A {configs.EOS} $B {configs.EOS}",
        special_tokens=[(configs.BOS, vocab[configs.BOS]), (configs.EOS, vocab[configs.EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=configs.MAX_TOKENS,
        padding_side="right",
        truncation_side="right",
        pad_token=configs.PAD,
        unk_token=configs.UNK,
        bos_token=configs.BOS,
        eos_token=configs.EOS,
    )


def save_tokenizer(out_dir: Path | str | None = None, words: list[str] | None = None):
    out_dir = Path(out_dir or configs.EMBEDDED_DIR / "tokenizer")
    tok = build_tokenizer(words)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: Path | str | None = None):
    from transformers import PreTrainedTokenizerFast

    path = Path(path or configs.EMBEDDED_DIR / "tokenizer")
    if not (path / "tokenizer.json").exists():
        return save_tokenizer(path)
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def tokenize(tok, prompts: list[str]):
    """The exact call the pipeline makes: pad to max length, truncate, return ids (no attention mask used)."""
    return tok(
        prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_text(text_encoder, tok, prompts: list[str]):
    """Prompts -> the text encoder's last hidden states [n, L, D], as the pipeline's `encode_prompt` computes them.

    For bare components while they train (no pipeline exists yet, and the text encoder learns, so gradients flow
    through); once a pipeline exists (distillation, evaluation through Session) use its `encode_prompt`.
    """
    return text_encoder(tokenize(tok, prompts).to(next(text_encoder.parameters()).device))[0]
