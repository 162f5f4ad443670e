"""Textual inversion: one new word whose embedding is learned while the whole model stays frozen (section 4)."""

from __future__ import annotations

import os

import torch
from torch import nn

from dreamvideo.fileio import DreamVideoError, load_safetensors, save_safetensors


class TokenError(DreamVideoError):
    pass


def is_existing_word(tokenizer, token: str) -> bool:
    """Whether ``token`` already means something to the tokenizer: a vocabulary entry or one known piece.

    Args:
        tokenizer: a transformers tokenizer.
        token: the candidate placeholder.
    """
    pieces = tokenizer.tokenize(token)
    return token in tokenizer.get_vocab() or (len(pieces) == 1 and pieces[0] != tokenizer.unk_token)


def check_placeholder(tokenizer, token: str, init_word: str) -> int:
    """Check that ``token`` is new and ``init_word`` is one token of the vocabulary; return the word's id.

    Args:
        tokenizer: a transformers CLIP tokenizer (slow or fast).
        token: the placeholder, e.g. ``"<sks>"``.
        init_word: the class word initialising it, e.g. ``"dog"``.
    """
    if not token or any(c.isspace() for c in token):
        raise TokenError(f"placeholder token {token!r} must be a non-empty string without spaces")
    if is_existing_word(tokenizer, token):
        raise TokenError(
            f"placeholder token {token!r} is already in the tokenizer's vocabulary; choose another"
        )
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if len(init_ids) != 1 or init_ids[0] == tokenizer.unk_token_id:
        from dreamvideo.validate import single_token_words

        what = (
            f"is {len(init_ids)} tokens {tokenizer.convert_ids_to_tokens(init_ids)}"
            if len(init_ids) != 1
            else "is not in the tokenizer's vocabulary"
        )
        raise TokenError(
            f"--init-word {init_word!r} {what}; choose a single-token word, e.g. "
            f"{', '.join(single_token_words(tokenizer))}"
        )
    return init_ids[0]


def add_placeholder_token(tokenizer, text_encoder, token: str, init_word: str) -> int:
    """Add ``token`` to the vocabulary with its embedding initialised from ``init_word``; return its id.

    Args:
        tokenizer: a transformers CLIP tokenizer (slow or fast).
        text_encoder: the matching text model (``get_input_embeddings`` / ``resize_token_embeddings``).
        token: the placeholder, e.g. ``"<sks>"``; must be new to the vocabulary and a single token once added.
        init_word: a word of the vocabulary that encodes to exactly one token, e.g. ``"dog"``.
    """
    init_id = check_placeholder(tokenizer, token, init_word)
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        weight = text_encoder.get_input_embeddings().weight
        weight[token_id] = weight[init_id]
    return token_id


class PlaceholderEmbedding(nn.Module):
    """Wraps a token-embedding table so that only the placeholder's row is a trainable parameter.

    Every other row is read from the frozen table, so it stays bit-identical however the optimiser behaves.
    """

    def __init__(self, base: nn.Embedding, token_id: int) -> None:
        super().__init__()
        self.base = base
        self.token_id = token_id
        self.vector = nn.Parameter(base.weight[token_id].detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        is_token = (input_ids == self.token_id).unsqueeze(-1)
        return torch.where(is_token, self.vector.to(embeds.dtype), embeds)


def wrap_placeholder(text_encoder, token_id: int) -> PlaceholderEmbedding:
    wrapper = PlaceholderEmbedding(text_encoder.get_input_embeddings(), token_id)
    text_encoder.set_input_embeddings(wrapper)
    return wrapper


def unwrap_placeholder(text_encoder) -> torch.Tensor:
    """Write the learned vector back into the table, restore the plain embedding, and return the vector."""
    wrapper = text_encoder.get_input_embeddings()
    if not isinstance(wrapper, PlaceholderEmbedding):
        raise TypeError("text encoder has no placeholder embedding to unwrap")
    with torch.no_grad():
        wrapper.base.weight[wrapper.token_id] = wrapper.vector.to(wrapper.base.weight.dtype)
    text_encoder.set_input_embeddings(wrapper.base)
    return wrapper.vector.detach().clone()


def save_learned_embeds(
    path: str | os.PathLike, token: str, vector: torch.Tensor, metadata: dict | None = None
) -> None:
    """Write the diffusers textual-inversion format: ``{token: tensor (1, dim)}`` (loads with ``load_textual_inversion``)."""
    save_safetensors({token: vector.detach().float().reshape(1, -1)}, path, metadata)


def load_learned_embeds(path: str | os.PathLike) -> tuple[str, torch.Tensor]:
    tensors, _ = load_safetensors(path)
    if len(tensors) != 1:
        raise TokenError(f"{path}: expected one learned token, found {len(tensors)}")
    token, vector = next(iter(tensors.items()))
    return token, vector.reshape(-1)


def check_learned_token(tokenizer, text_encoder, token: str, vector: torch.Tensor, source: str = "") -> None:
    """Check that a learned token can be added to a tokenizer/text encoder pair (inference): its width matches the
    text encoder and it is not an existing word of the base's vocabulary (whose embedding it would overwrite).

    Args:
        tokenizer: a transformers CLIP tokenizer.
        text_encoder: the matching text model.
        token: the learned word, e.g. ``"<sks>"``.
        vector: its embedding.
        source: the file it came from, for the error message.
    """
    weight = text_encoder.get_input_embeddings().weight
    if vector.numel() != weight.shape[1]:
        raise TokenError(
            f"{source}: token {token!r} has width {vector.numel()}, the text encoder {weight.shape[1]}"
        )
    if token not in tokenizer.get_added_vocab() and is_existing_word(tokenizer, token):
        raise TokenError(
            f"{source}: token {token!r} is an existing word of the base's vocabulary; loading it "
            "would overwrite that word's embedding"
        )
