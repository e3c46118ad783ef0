"""What the prompt box says while you type: the token count against the model's window and, for a model with
a closed vocabulary, the words it does not know. Pure functions of a tokenizer and text (no gradio here).

Nothing here knows a particular model: a vocabulary is "closed" when the tokenizer maps a word it cannot
know to its unknown token (a word-level tokenizer such as the embedded model's); an open one (CLIP's
byte-level BPE) splits any word into pieces and never needs the unknown token.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

PROBE_WORD = "qzxjvkwq"  # no vocabulary of real words holds this; a closed one maps it to the unknown token
MAX_SHOWN_WORDS = 400  # a larger closed vocabulary is described, not listed


@dataclass(frozen=True)
class PromptCheck:
    """A prompt as the text encoder will read it."""

    tokens: int  # with the begin/end tokens, as the pipeline counts them
    window: int  # the text encoder's window (tokenizer.model_max_length)
    unknown: tuple[str, ...]  # words the tokenizer maps to its unknown token, in order, once each
    empty: bool

    @property
    def too_long(self) -> bool:
        return self.tokens > self.window

    def markdown(self) -> str:
        """One line for under the prompt box: the count, then what is wrong, if anything."""
        parts = [f"{self.tokens} / {self.window} tokens"]
        if self.too_long:
            parts.append(f"**too long by {self.tokens - self.window}**: shorten the prompt")
        if self.unknown:
            words = ", ".join(f"'{html.escape(word)}'" for word in self.unknown)
            parts.append(f"**unknown to this model:** {words} (see the words it knows)")
        if self.empty:
            parts.append("**empty**: describe what to paint")
        return " · ".join(parts)


def check_prompt(tokenizer, text: str | None) -> PromptCheck:
    text = text or ""
    ids = tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
    return PromptCheck(tokens=len(ids), window=int(tokenizer.model_max_length), unknown=unknown_words(tokenizer, text),
                       empty=not text.strip())


def unknown_words(tokenizer, text: str) -> tuple[str, ...]:
    """The words of `text` the tokenizer maps to its unknown token (none for an open vocabulary)."""
    unk = tokenizer.unk_token_id
    if unk is None or not text.strip():
        return ()
    found = []
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        found = [text[start:end] for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"],
                                                                strict=True) if token == unk]
    else:
        found = [word for word in text.split() if unk in tokenizer(word, add_special_tokens=False)["input_ids"]]
    return tuple(dict.fromkeys(found))


def closed_vocabulary(tokenizer) -> list[str] | None:
    """The words a closed-vocabulary tokenizer knows (no special tokens), sorted; None for an open vocabulary."""
    if not unknown_words(tokenizer, PROBE_WORD):
        return None
    specials = set(tokenizer.all_special_tokens)
    return sorted(word for word in tokenizer.get_vocab() if word not in specials)


def vocabulary_markdown(words: list[str] | None) -> str:
    if words is None:
        return ""
    if len(words) > MAX_SHOWN_WORDS:
        return f"This model knows {len(words)} words; others are read as 'unknown'."
    return "This model knows only these words: " + " ".join(f"`{html.escape(word)}`" for word in words)
