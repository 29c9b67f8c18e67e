"""The text tower fed token embeddings instead of token ids, for either kind of tower.

Methods that learn words (RCNn's reconstructed class names, CoOp-style context vectors)
splice trainable vectors into a prompt's token embeddings and run the frozen text tower
on the result. Two towers are supported:

- open_clip's own ``CLIP`` text transformer (the tiny CLIPs, ViT-B/16 ...): token
  embeddings + positional embeddings, the causal transformer, ``ln_final``, the pooled
  (eot / argmax) token, ``text_projection`` — open_clip's ``encode_text`` from embeddings;
- a HuggingFace encoder in open_clip's ``HFTextEncoder`` (the packaged all-MiniLM-L6-v2 of
  ``icon-lit``): the word embeddings are BERT's ``word_embeddings``; BERT's embedding layer
  adds the position and token-type embeddings and its LayerNorm (``inputs_embeds``), the
  encoder attends over the non-pad tokens, the output is mean-pooled over them and
  projected — exactly ``HFTextEncoder.forward`` from ids.

Prompts are tokenised by the backbone's tokenizer; ``subword_ids`` gives a text's ids
without the start/end tokens (CLIP's BPE, BERT's WordPiece), so a prompt's position
``1 + len(subword_ids(context))`` is the first word after the context for both.
"""

from __future__ import annotations

import open_clip
import torch


def is_hf_text(model) -> bool:
    return isinstance(getattr(model, "text", None), open_clip.hf_model.HFTextEncoder)


def check_text_tower(model, who: str) -> None:
    if is_hf_text(model) or (
        isinstance(model, open_clip.CLIP) and hasattr(model, "token_embedding")
    ):
        return
    raise TypeError(
        f"{who}: feeding token embeddings to the text tower needs an open_clip CLIP text "
        f"transformer or a HuggingFace text tower (got {type(model).__name__})"
    )


def token_embedding(model) -> torch.nn.Embedding:
    """The table that maps token ids to the vectors the text tower reads."""
    if is_hf_text(model):
        return model.text.transformer.embeddings.word_embeddings
    return model.token_embedding


def encode_token_embeddings(model, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The text tower from token embeddings (B, L, W); ``tokens`` (B, L) give the pooled
    position (CLIP: eot) or the attention mask (HF: non-pad). Unnormalised (B, D)."""
    if is_hf_text(model):
        text = model.text
        mask = (tokens != text.config.pad_token_id).long()
        out = text.transformer(inputs_embeds=embeds, attention_mask=mask)
        return text.proj(text.pooler(out, mask))
    cast = model.transformer.get_cast_dtype()
    x = embeds.to(cast) + model.positional_embedding.to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    if model.text_projection is not None:
        proj = model.text_projection
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def subword_ids(tokenizer, text: str) -> list[int]:
    """A text's token ids without start / end tokens (CLIP BPE or HF WordPiece)."""
    if isinstance(tokenizer, open_clip.tokenizer.HFTokenizer):
        return list(tokenizer.tokenizer.encode(text, add_special_tokens=False))
    if hasattr(tokenizer, "encode"):
        return list(tokenizer.encode(text))
    raise TypeError(f"cannot split text into subwords with a {type(tokenizer).__name__}")
