"""The text encoder's top layers in the loop: item text vectors trained by the ranking loss.

EM3 as published keeps the heavy encoder frozen and trains what reads its outputs. On the real sets
that caps what content gives (``benchmarks.encoder_probe``: all-MiniLM-L6-v2 fine-tuned on an
item's appeal predicts it for unseen items better than its frozen pooled vector; the Q-Former over
the frozen features does not). :class:`TextEncoderTop` puts the top ``k`` of MiniLM's layers back
into the ranker, trained by its loss:

- every item's hidden states below those layers are computed once, when the model is built
  (:func:`build_text_encoder_top`: frozen, ``(I, T, W)`` bf16 per process, ~40 MB per modality on
  ml-100k), so a step runs ``k`` layers, not six;
- a training step runs the top layers over the batch's distinct targets and catalogue sample, with
  gradient, and mean-pools their real tokens as the stored vectors were pooled; those vectors
  replace the stored pooled vectors (``Batch.content_tokens`` at the pooled level, ``T = 1``) for
  whichever content tower follows (EM3's or the frozen baseline's);
- the batch's other items (history only) read a per-item bank of the encoder's latest vectors,
  without gradient: written by every step's fresh rows and recomputed for every item from the
  current weights whenever the module enters training mode (each epoch, and after a restart);
- evaluation encodes every item of the batch fresh.

At initialisation the vectors equal the stored ones (up to bf16 rounding; checked when the module is
built), so a model starts where it starts without this module.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from em3rec.data.batch import Batch
from em3rec.data.item_texts import tokenise_item_texts
from em3rec.modules.content_io import DistinctTargets
from em3rec.modules.shape_buckets import bucket_size, pad_index, wants_buckets

logger = logging.getLogger(__name__)

STORED_TOLERANCE = 0.05  # max |fresh - stored| of a pooled vector entry at init (bf16 states: ~0.01)


class TextEncoderTop(nn.Module):
    """The top ``k`` layers of a BERT-style text encoder over frozen lower-layer states, per modality.

    Args:
        layers (nn.ModuleList): the trainable top layers (``transformers`` ``BertLayer``s).
        config: the encoder's ``transformers`` config (its attention implementation builds the mask).
        states (dict[str, torch.Tensor]): modality -> ``(I, T_m, W)`` hidden states of every item
            entering ``layers`` (item index = row), any float dtype; kept as given.
        masks (dict[str, torch.Tensor]): modality -> ``(I, T_m)`` bool, True for a real token; an
            item without text has none and gets a zero vector.

    The states, masks and bank are plain tensors, not parameters or buffers: derived from the data,
    the same on every rank, never in a checkpoint, never broadcast by DDP.

    Example::

        top = build_text_encoder_top(Path("data/ml100k"), {"meta": 32}, trainable_layers=1)
        batch = top(batch, DistinctTargets.of(batch.target_content_index, batch.weights))
        batch.content_tokens["meta"].shape  # (U, 1, 384): the top layer's pooled output
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        config: object,
        states: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
    ) -> None:
        super().__init__()
        from transformers.masking_utils import create_bidirectional_mask

        self.layers = layers
        self._config = config
        self._attention_mask = create_bidirectional_mask  # the mask the config's attention implementation takes
        self.modalities = list(states)
        self._states = states
        self._masks = masks
        self._banks: dict[str, torch.Tensor] | None = None  # modality -> (I, W) float32
        self._pretrained: dict[str, torch.Tensor] | None = None  # the first bank, for drift()

    def train(self, mode: bool = True) -> "TextEncoderTop":
        """Entering training mode drops the bank: the next step rebuilds it from the current weights."""
        if mode:
            self._banks = None
        return super().train(mode)

    def width(self, modality: str) -> int:
        """The width ``W`` of ``modality``'s vectors."""
        return self._states[modality].shape[-1]

    def encode(self, modality: str, item_ids: torch.Tensor) -> torch.Tensor:
        """``(N,)`` item ids -> ``(N, W)`` float32 masked means of the top layers' output tokens."""
        states, masks = self._to_device(item_ids.device)
        n = item_ids.shape[0]
        if wants_buckets(states[modality]) and bucket_size(n) != n:  # CPU bf16: shapes that repeat
            return self.encode(modality, pad_index(item_ids, bucket_size(n)))[:n]
        mask = masks[modality].index_select(0, item_ids)  # (N, T)
        has_text = mask.any(1)  # (N,)
        attend = mask.clone()
        attend[:, 0] |= ~has_text  # a text-less item attends to its (zero) first slot: no empty softmax
        hidden = states[modality].index_select(0, item_ids)  # (N, T, W)
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else None
        hidden = hidden.to(dtype or self.layers[0].output.dense.weight.dtype)
        attention_mask = self._attention_mask(config=self._config, inputs_embeds=hidden, attention_mask=attend)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=attention_mask)  # (N, T, W)
        weight = mask.unsqueeze(-1).float()  # (N, T, 1)
        return (hidden.float() * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (N, W)

    def forward(self, batch: Batch, targets: DistinctTargets) -> Batch:
        """``batch`` with this module's modalities re-encoded (:meth:`reencode`); in training the
        distinct targets and the catalogue sample with gradient, the other items from the bank."""
        rows = None
        if self.training:
            rows = torch.unique(torch.cat([targets.index, batch.catalogue_content_index]))  # (R,)
        return replace(batch, content_tokens=self.reencode(batch.content_tokens, batch.content_item_ids, rows))

    def reencode(
        self, tokens: dict[str, torch.Tensor], item_ids: torch.Tensor, rows: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Pooled-level content with this module's modalities re-encoded.

        Args:
            tokens: modality -> ``(U_t, 1, W_m)`` the stored pooled vectors of the first ``U_t`` of
                the items ``item_ids`` (``Batch.content_tokens`` at the pooled level).
            item_ids: ``(U,)`` item ids (``Batch.content_item_ids``).
            rows: ``(R,)`` distinct indices into ``tokens`` encoded with gradient in training; the
                other rows read the bank. None, or in evaluation: every row encoded.

        Returns:
            ``tokens`` with each of this module's modalities replaced: ``(U_t, 1, W_m)``, its dtype.
        """
        out = dict(tokens)
        for m in self.modalities:
            stored = tokens[m]
            ids = item_ids[: stored.shape[0]]  # (U_t,)
            if rows is None or not self.training:
                out[m] = self.encode(m, ids).to(stored.dtype).unsqueeze(1)
                continue
            fresh = self.encode(m, ids.index_select(0, rows))  # (R, W)
            bank = self._bank(m, ids.device)
            current = bank.index_select(0, ids).index_copy(0, rows, fresh)  # (U_t, W)
            bank.index_copy_(0, ids.index_select(0, rows), fresh.detach())
            out[m] = current.to(stored.dtype).unsqueeze(1)
        return out

    @torch.no_grad()
    def encode_all(self, modality: str, device: torch.device, chunk: int = 512) -> torch.Tensor:
        """``(I, W)`` float32: every item's vector from the current weights."""
        num_items = self._states[modality].shape[0]
        was_training = self.layers.training
        self.layers.eval()  # no dropout: the vectors as evaluation sees them
        parts = [
            self.encode(modality, torch.arange(lo, min(lo + chunk, num_items), device=device))
            for lo in range(0, num_items, chunk)
        ]
        self.layers.train(was_training)
        return torch.cat(parts)

    def _bank(self, modality: str, device: torch.device) -> torch.Tensor:
        if self._banks is None:
            started = time.perf_counter()
            self._banks = {m: self.encode_all(m, device) for m in self.modalities}
            if self._pretrained is None:  # the first bank: the pretrained layers' vectors
                self._pretrained = {m: b.clone() for m, b in self._banks.items()}
            logger.info(
                "text encoder top: bank of %s item vectors rebuilt in %.1f s; moved from the pretrained vectors: %s",
                {m: b.shape[0] for m, b in self._banks.items()},
                time.perf_counter() - started,
                self.drift(),
            )
        return self._banks[modality]

    def drift(self) -> dict[str, str]:
        """Per modality, how far the items' current vectors (the bank) are from this process's first
        bank (the pretrained layers', unless the run resumed): mean cosine and mean relative L2
        change over the items with text."""
        out = {}
        for m, bank in (self._banks or {}).items():
            start = self._pretrained[m]
            has_text = start.norm(dim=1) > 0
            now, then = bank[has_text], start[has_text]
            cosine = torch.nn.functional.cosine_similarity(now, then, dim=1).mean().item()
            relative = ((now - then).norm(dim=1) / then.norm(dim=1)).mean().item()
            out[m] = f"cosine {cosine:.4f}, |change| / |vector| {relative:.4f}"
        return out

    def _to_device(self, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The states and masks on ``device`` (moved once, at the first call there)."""
        first = self._states[self.modalities[0]]
        if first.device != device:
            self._states = {m: s.to(device) for m, s in self._states.items()}
            self._masks = {m: s.to(device) for m, s in self._masks.items()}
        return self._states, self._masks


@torch.no_grad()
def build_text_encoder_top(
    data_path: Path, modality_tokens: dict[str, int], trainable_layers: int, batch: int = 256
) -> TextEncoderTop:
    """A :class:`TextEncoderTop` over the prepared set at ``data_path``.

    Loads the set's text encoder (all-MiniLM-L6-v2, from its pinned package, as ``data_prep`` does),
    tokenises each modality's ``items.parquet`` texts to ``modality_tokens[m]`` tokens as data
    preparation did (checked against the stored ``<m>.mask.npy``), runs the layers below the top
    ``trainable_layers`` once and keeps their output states in bf16; the top layers are a trainable
    copy of the pretrained ones, checked to give back the stored ``<m>.pooled.npy``.

    Args:
        data_path (Path): the prepared set (``items/items.parquet``, ``items/<m>.mask.npy``, ``.pooled.npy``).
        modality_tokens (dict[str, int]): modality -> its stored token count ``T_m`` (``meta.json``).
        trainable_layers (int): how many of the encoder's top layers train (1 .. its depth).
    """
    from data_prep.text_encoder import load_model

    tokenizer, encoder = load_model()
    depth = len(encoder.encoder.layer)
    if not 1 <= trainable_layers <= depth:
        raise ValueError(f"model.text_encoder.trainable_layers = {trainable_layers}; expected 1 .. {depth}")
    started = time.perf_counter()
    folder = Path(data_path) / "items"
    states, masks = {}, {}
    for m, max_tokens in modality_tokens.items():
        input_ids, attention_mask = tokenise_item_texts(folder, m, max_tokens, tokenizer)  # (I, T) each
        # An item without text attends to its [CLS] (no empty softmax); its vector is zeroed anyway.
        forward_mask = attention_mask.clone()
        forward_mask[:, 0] = 1
        parts = []
        for lo in range(0, len(input_ids), batch):
            out = encoder(
                input_ids=input_ids[lo : lo + batch],
                attention_mask=forward_mask[lo : lo + batch],
                output_hidden_states=True,
            )
            parts.append(out.hidden_states[depth - trainable_layers].to(torch.bfloat16))  # (b, T, W)
        states[m], masks[m] = torch.cat(parts), attention_mask.bool()
    layers = copy.deepcopy(encoder.encoder.layer[depth - trainable_layers :]).train()
    for p in layers.parameters():
        p.requires_grad_(True)
    top = TextEncoderTop(layers, encoder.config, states, masks)
    for m in modality_tokens:  # the pretrained top layers must give back the stored vectors
        stored = torch.from_numpy(np.load(folder / f"{m}.pooled.npy")).float()  # (I, W)
        gap = (top.encode_all(m, torch.device("cpu")) - stored).abs().max().item()
        if gap > STORED_TOLERANCE:
            raise ValueError(
                f"{folder}/{m}.pooled.npy: the stored vectors are not the text encoder's own output for "
                f"items.parquet's {m}_text (max |difference| {gap:.3f} > {STORED_TOLERANCE}); "
                "model.text_encoder needs the features as data_prep wrote them"
            )
    logger.info(
        "text encoder top: %d of %d layers train over %s; lower states of %s items computed in %.1f s",
        trainable_layers,
        depth,
        list(modality_tokens),
        {m: s.shape[0] for m, s in states.items()},
        time.perf_counter() - started,
    )
    return top
