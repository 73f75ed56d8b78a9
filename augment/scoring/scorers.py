"""Scorers: any vision-language model of `models/` seen as a batch embedder of PIL images and captions.

A `Scorer` turns images and captions into unit-normalised ITC embeddings in batches. Its `id`
names the exact weights (a content hash for local folders and tiny twins, name + tag otherwise),
so embedding caches keyed by it are never shared between different models; `slug` is a short
folder name.

`load_scorer` accepts every name `models.load_model` accepts (open_clip architectures with
`--pretrained TAG`, tiny twins, Hub ids of BLIP or transformers CLIP, folders), so `--scorer`,
`--model` and `--attacker-model` name models the same way. A `transformers:` prefix is accepted
for compatibility (transformers CLIP ids and folders).
"""
from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from augment.errors import ModelLoadError

DEFAULT_BATCH_SIZE = 64


class Scorer(ABC):
    """Embeds images and captions; every output row has unit L2 norm (float32, on the CPU)."""

    kind: str = ""

    def __init__(self, name: str, scorer_id: str, batch_size: int = DEFAULT_BATCH_SIZE, device: Any = "cpu"):
        self.name = name
        self.id = scorer_id
        self.batch_size = int(batch_size)
        self.device = device

    @property
    def slug(self) -> str:
        return scorer_slug(self.name, self.id)

    def describe(self) -> dict:
        return {"name": self.name, "id": self.id, "slug": self.slug, "kind": self.kind}

    def encode_images(self, images: Sequence[Any]):
        """(n, d) unit-norm embeddings of PIL images, computed `batch_size` at a time."""
        return self._batched(list(images), self._encode_image_batch)

    @abstractmethod
    def prepare_images(self, images: Sequence[Any]):
        """The model's input tensor (n, 3, H, W) of decoded images (its eval preprocessing,
        stacked): the part of image encoding that DataLoader workers can do ahead of the model
        (`encode_prepared`)."""

    def image_preparer(self):
        """`prepare_images` as a callable that DataLoader workers receive, pickled for each worker
        where workers are spawned (macOS's default start method, `forkserver`). This default is the
        bound method, which carries the whole scorer, model included: a scorer with a model overrides
        it with its preprocessing alone (`ModelScorer`: a module-level function and its transform)."""
        return self.prepare_images

    def encode_prepared(self, pixels):
        """(n, d) unit-norm embeddings of a batch `prepare_images` made."""
        import torch

        with torch.inference_mode():
            features = self._encode_pixel_batch(pixels).float()
            return torch.nn.functional.normalize(features, dim=-1).cpu()

    @abstractmethod
    def _encode_pixel_batch(self, pixels):
        """Raw (unnormalised) image features of a stacked batch of prepared images."""

    # whether encode_texts batches captions by length (ModelScorer: not for open_clip models)
    groups_texts = True

    def encode_texts(self, texts: Sequence[str]):
        """(n, d) unit-norm embeddings of captions, computed `batch_size` at a time, in batches
        of captions of similar length (by characters, a proxy for tokens): a batch is padded to
        its longest caption, and padding is masked, so grouping leaves less padding to compute
        for the same embeddings (equal to float rounding; tested)."""
        import torch

        texts = list(texts)
        if not self.groups_texts:
            return self._batched(texts, self._encode_text_batch)
        order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
        grouped = self._batched([texts[k] for k in order], self._encode_text_batch)
        embeddings = torch.empty_like(grouped)
        embeddings[order] = grouped
        return embeddings

    def _batched(self, inputs: list, encode_batch):
        import torch

        if not inputs:
            raise ValueError("nothing to encode")
        parts = []
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                features = encode_batch(inputs[start : start + self.batch_size]).float()
                parts.append(torch.nn.functional.normalize(features, dim=-1).cpu())
        return torch.cat(parts)

    def _encode_image_batch(self, images: list):
        """Raw (unnormalised) image features of one batch."""
        return self._encode_pixel_batch(self.prepare_images(images))

    @abstractmethod
    def _encode_text_batch(self, texts: list[str]):
        """Raw (unnormalised) text features of one batch."""


class ModelScorer(Scorer):
    """A `models.base.VisionLanguageModel` (any family) as a scorer."""

    def __init__(self, model, scorer_id: str, batch_size: int = DEFAULT_BATCH_SIZE, device: Any = "cpu"):
        name = model.name if not model.pretrained else f"{model.name}:{model.pretrained}"
        super().__init__(name, scorer_id, batch_size, device)
        self.model = model
        self.kind = model.family
        # open_clip models run texts in length groups themselves (or pad to the full context):
        # grouping here saves nothing there, and it raised the peak RSS of scoring 100k text rows
        # with tiny-clip by about 130 MiB (bench scoring's memory run)
        self.groups_texts = model.family != "open_clip"

    def prepare_images(self, images: Sequence[Any]):
        return prepare_rgb_batch(self.model.preprocess_eval, images)

    def image_preparer(self):
        import functools

        return functools.partial(prepare_rgb_batch, self.model.preprocess_eval)

    def _encode_pixel_batch(self, pixels):
        return self.model.encode_image(pixels.to(self.device), normalize=False)

    def _encode_text_batch(self, texts: list[str]):
        return self.model.encode_text(texts, normalize=False)


def prepare_rgb_batch(transform, images: Sequence[Any]):
    """`prepare_batch` of the images converted to RGB (a module-level function: it pickles)."""
    return prepare_batch(transform, [_rgb(image) for image in images])


def prepare_batch(transform, images: list):
    """`torch.stack([transform(image) for image in images])`, the same numbers, done as one array
    operation where `transform` is a torchvision Compose of PIL steps ending in ToTensor (every
    family's eval transform here): the PIL steps run per image, skipped where they cannot change
    the pixels (a shortest-side Resize to the side the image already has, a CenterCrop to its own
    size: Pillow returns a copy), then ToTensor's uint8 -> float / 255 runs once on the stacked
    batch. Per-image ToTensor and torchvision's per-call overhead were a third of the first
    scoring pass's preprocessing (1,024 64 px images). Any other transform: per image."""
    import numpy as np
    import torch
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None) if isinstance(transform, T.Compose) else None
    if not images or not steps or type(steps[-1]) is not T.ToTensor:
        return torch.stack([transform(image) for image in images])
    pictures, skips = [], {}  # (step, size, mode) of the image as it reaches the step -> skip it?
    for image in images:
        for k, step in enumerate(steps[:-1]):
            state = (k, image.size, image.mode)
            if state not in skips:
                skips[state] = _leaves_pixels(step, image)
            if not skips[state]:
                image = step(image)
        pictures.append(image)
    if any(p.mode != "RGB" or p.size != pictures[0].size for p in pictures):
        return torch.stack([steps[-1](picture) for picture in pictures])
    width, height = pictures[0].size
    pixels = np.empty((len(pictures), height, width, 3), dtype=np.uint8)
    for k, picture in enumerate(pictures):  # tobytes straight into the batch: no per-image array, no stack
        pixels[k] = np.frombuffer(picture.tobytes(), dtype=np.uint8).reshape(height, width, 3)
    # the same values as permute -> contiguous -> float -> div (elementwise steps do not depend
    # on the layout), with one copy fewer: converted in the decoded layout, made contiguous last
    channels_first = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return channels_first.to(dtype=torch.get_default_dtype()).div_(255).contiguous()


def _leaves_pixels(step, image) -> bool:
    """Whether torchvision `step` would return `image`'s own pixels (so it can be skipped)."""
    from torchvision import transforms as T

    width, height = image.size
    if type(step) is T.Resize and step.max_size is None:
        size = step.size if isinstance(step.size, int) else list(step.size)
        if isinstance(size, list) and len(size) == 1:
            size = size[0]
        return size == min(width, height) if isinstance(size, int) else [height, width] == size
    if type(step) is T.CenterCrop:
        return [height, width] == list(step.size)
    if type(step) is T.Lambda and getattr(step.lambd, "__name__", "") == "to_rgb":
        return image.mode == "RGB"
    return False


def _rgb(image):
    from augment.sources import to_rgb  # 16-bit greyscale scaled, not clipped by PIL's convert

    return image if image.mode == "RGB" else to_rgb(image)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def scorer_slug(name: str, scorer_id: str) -> str:
    """Folder-safe short name: readable part of the model name (a local path in it by its last part)
    plus a hash of its id."""
    from augment.local_paths import shorten_local_paths

    name = _without_folder_prefix(name)  # `transformers:DIR` is DIR: one scorer, one folder of scores
    readable = Path(name.rstrip("/")).name if ("/" in name and Path(name).exists()) else shorten_local_paths(name)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", readable).strip("-.")[-40:] or "scorer"
    return f"{readable}-{hashlib.sha256(scorer_id.encode()).hexdigest()[:8]}"


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256, read in 1 MiB blocks (hashlib.file_digest
    does this from Python 3.11; the project supports 3.10)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def scorer_kind(name: str) -> str:
    """The model family a scorer name belongs to (`models.family_of`)."""
    from models import family_of

    return family_of(name)


@dataclass(frozen=True)
class ScorerIdentity:
    """A scorer's `name`, `id` and `slug` known without loading its weights (`scorer_identity`):
    enough to find its stored scores (`augment.scoring.pool_scores.reuse_stored`)."""

    name: str
    id: str

    @property
    def slug(self) -> str:
        return scorer_slug(self.name, self.id)


def scorer_identity(name: str, pretrained: str | None = None) -> ScorerIdentity | None:
    """The identity `load_scorer(name, pretrained)` would give, for the names whose id is a file
    hash (tiny twins, folders: the family and `_weights_digest`), read without loading the weights
    (nor, for tiny twins and mat-plus checkpoints, importing the model's library); None for the
    others (their id needs the resolved tag) or a name that does not resolve (loading it says why)."""
    if pretrained:
        return None
    try:
        digest = _weights_digest(name)
        return ScorerIdentity(name, f"{scorer_kind(name)}:{digest}") if digest is not None else None
    except ModelLoadError:
        return None


def load_scorer(name: str = "default", pretrained: str | None = None, device: Any = "cpu",
                batch_size: int = DEFAULT_BATCH_SIZE) -> Scorer:
    """Load the scorer model `name` (with open_clip tag `pretrained`); ModelLoadError if it cannot."""
    from models import load_model

    model = load_model(name, pretrained=pretrained, device=device, kind="retrieval")
    return ModelScorer(model, _model_id(name, model), batch_size, device)


# prefixes that name a folder read by a given family (`transformers:FOLDER`, `local-dir:FOLDER`)
FOLDER_PREFIXES = ("local-dir:", "transformers:")


def _scorer_folder(name: str) -> Path | None:
    """The folder a tiny twin's or a folder scorer's files are in; None for other names."""
    from augment import tiny

    name = _without_folder_prefix(name)  # `transformers:tiny-hf-clip` is tiny-hf-clip (README, Models)
    if name in tiny.FAMILY_TWINS:
        return tiny.tiny_dir(name)
    folder = Path(name).expanduser()
    return folder if folder.is_dir() else None


def _without_folder_prefix(name: str) -> str:
    for prefix in FOLDER_PREFIXES:
        name = name.removeprefix(prefix)
    return name


# a scorer folder's weights files (models.base.ImageTextModel.save_native): a family of one's own
# saving `model.pt` was refused for naming its weights otherwise than the built-in families
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _weights_digest(name: str) -> str | None:
    """The digest of every file at the top of a tiny twin's or a model folder's folder (each weights
    shard, the model and preprocessing configs, the tokenizer: a folder retrained or re-configured in
    place is another scorer); None when `name` names no folder; ModelLoadError when the folder holds
    no weights file."""
    folder = _scorer_folder(name)
    if folder is None:
        return None
    files = sorted(path for path in folder.iterdir() if path.is_file())
    if not any(path.suffix in WEIGHTS_SUFFIXES for path in files):
        raise ModelLoadError(f"cannot score with {folder}: no weights file "
                             f"({', '.join('*' + suffix for suffix in WEIGHTS_SUFFIXES)})")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_digest(path)};".encode())
    return digest.hexdigest()[:16]


def _hub_commit(name: str, model) -> str | None:
    """The Hub commit a Hub model's files came from: what its family records (transformers' config), or
    for open_clip's `hf-hub:` ids the snapshot its cached config is in; None for other names."""
    commit = model.describe().get("commit")
    if commit or not name.startswith("hf-hub:"):
        return commit
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name.removeprefix("hf-hub:"), "open_clip_config.json")
    return Path(cached).parent.name if isinstance(cached, str) else None


def _model_id(name: str, model) -> str:
    """The folder's digest for folders and tiny twins; otherwise family + name + tag (or the tag file's
    digest), and the Hub commit where the weights came from the Hub (another revision is another scorer)."""
    digest = _weights_digest(name)
    if digest is not None:
        return f"{model.family}:{digest}"
    tag = model.pretrained
    if tag and Path(tag).expanduser().is_file():
        tag = file_digest(Path(tag).expanduser())
    commit = _hub_commit(name, model)
    return f"{model.family}:{name}:{tag}" + (f"@{commit}" if commit else "")
