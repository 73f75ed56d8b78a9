"""The captioning task: a captioner trained and attacked through its language-model loss.

* loss: the LM loss (mean token cross-entropy) of the batch's captions given their images. Rows
  that share a key (the same source image) are references of each other: each image is scored
  against every caption of its key in the batch (captioning's counterpart of retrieval's
  multi-positive loss), and, when a reference table is set (`set_references`, MAT+: the image's
  source captions and its pools' text views), against up to `max_references` of those too.
* image_attack_loss: the same LM loss of the reference captions; PGD maximises it (untargeted).
* text_attack: MAT's inner text attack: word substitutions in the reference captions (within
  `word_budget`) maximising their LM loss given the image (`ReferenceTextAttack`).

Methods: clean, tecoa (PGD images), mat and mat+ (adversarial image and adversarial reference
caption); FARE is an embedding-space method with no captioning counterpart here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch

from tasks.base import Task

if TYPE_CHECKING:
    from models.base import ImageTextModel, TextTokens


class CaptioningTask(Task):
    name: ClassVar[str] = "captioning"
    model_kind: ClassVar[str] = "captioning"
    methods: ClassVar[tuple[str, ...]] = ("clean", "tecoa", "mat", "mat+")

    # extra references per row when the trainer sets the table (MAT+); each costs one more decoder pass
    POOL_REFERENCES = 4

    def __init__(self, rank: int = 0, world_size: int = 1, *, references: str = "batch", max_references: int = 0,
                 **options: Any):
        super().__init__(rank, world_size, **options)
        if references not in ("batch", "row"):
            raise ValueError(f"unknown references {references!r}; expected 'batch' or 'row'")
        self.references = references
        self.max_references = int(max_references)
        self.reference_table: Sequence[Sequence[str]] | None = None
        self.step = 0  # the training step (`on_step`): which of a key's extra references are scored

    def set_references(self, table: Sequence[Sequence[str]], max_references: int | None = None) -> None:
        """All reference captions of each key (train image index), e.g. its captions plus pool text views."""
        self.reference_table = table
        self.max_references = int(max_references if max_references is not None else self.max_references or self.POOL_REFERENCES)

    def prepare_training(self, data: Any, method: str) -> None:
        """Called by the trainer with its `TrainData`: MAT+ scores each image against all its captions."""
        if method == "mat+":
            self.set_references(references_from_train_data(data))

    # losses -----------------------------------------------------------------------------------

    def _pairs(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image row, caption row) of every scored pair: the diagonal, plus same-key rows with 'batch'."""
        count = len(keys)
        if self.references == "row":
            rows = torch.arange(count, device=keys.device)
            return rows, rows
        same = keys[:, None] == keys[None, :]
        image_rows, caption_rows = torch.nonzero(same, as_tuple=True)
        return image_rows, caption_rows

    def reference_loss(self, model: "ImageTextModel", pixels: torch.Tensor, tokens: "TextTokens",
                       keys: torch.Tensor, texts: Sequence[str] | None = None) -> torch.Tensor:
        """Mean over images (rows) of the mean LM loss of that image's references (see module doc)."""
        keys = torch.as_tensor(keys, device=pixels.device)
        image_rows, caption_rows = self._pairs(keys)
        features = model.image_features(pixels)  # each image through the vision tower once, for all its references
        if len(image_rows) == len(keys) and torch.equal(image_rows, caption_rows):
            per_pair = model.caption_loss(pixels, tokens, reduction="none", features=features)
        else:
            per_pair = model.caption_loss(pixels, tokens[caption_rows.to(tokens.input_ids.device)],
                                          reduction="none", rows=image_rows, features=features)
        per_image = torch.zeros(len(keys), dtype=per_pair.dtype, device=per_pair.device)
        counts = torch.zeros_like(per_image)
        per_image.index_add_(0, image_rows.to(per_pair.device), per_pair)
        counts.index_add_(0, image_rows.to(per_pair.device), torch.ones_like(per_pair))
        extra = self._table_loss(model, pixels, keys, texts, image_rows, caption_rows, features)
        if extra is not None:
            extra_sum, extra_count = extra
            per_image, counts = per_image + extra_sum, counts + extra_count
        return (per_image / counts.clamp(min=1)).mean()

    def _table_loss(self, model, pixels: torch.Tensor, keys: torch.Tensor, texts: Sequence[str] | None,
                    image_rows: torch.Tensor, caption_rows: torch.Tensor, features: torch.Tensor | None = None):
        """(sum, count) per row of the LM losses of the row's extra references from the table: its
        key's captions that the batch does not already score for that row (`_pairs`: the row's own
        caption, and with 'batch' its key's other rows; another image's equal caption does not
        count), `max_references` of them taken as a window that moves with the step
        (`reference_window`), so source captions and pool views all take their turn."""
        if self.reference_table is None or self.max_references <= 0:
            return None
        scored: list[set[str]] = [set() for _ in range(len(keys))]
        if texts is not None:
            for image_row, caption_row in zip(image_rows.tolist(), caption_rows.tolist()):
                scored[image_row].add(texts[caption_row])
        rows, captions = [], []
        for row, key in enumerate(keys.tolist()):
            extra = self.reference_window([c for c in self.reference_table[key] if c not in scored[row]])
            rows += [row] * len(extra)
            captions += extra
        if not captions:
            return None
        index = torch.tensor(rows, device=pixels.device)
        losses = model.caption_loss(pixels, model.tokenize(captions), reduction="none", rows=index, features=features)
        total = torch.zeros(len(keys), dtype=losses.dtype, device=losses.device).index_add_(0, index, losses)
        count = torch.zeros_like(total).index_add_(0, index, torch.ones_like(losses))
        return total, count

    def reference_window(self, candidates: list[str]) -> list[str]:
        """`max_references` of a key's candidate extra references: all when there are no more;
        else a window starting at step x max_references (mod their number), wrapping round. A
        fixed prefix of the table would always be the same source captions (COCO and Flickr30k
        have 5 per image), never a pool view; the step (`on_step`) makes it the same on a resume."""
        if len(candidates) <= self.max_references:
            return candidates
        start = (self.step * self.max_references) % len(candidates)
        return (candidates[start:] + candidates[:start])[: self.max_references]

    def on_step(self, model: "ImageTextModel", step: int, steps_per_epoch: int) -> None:
        self.step = int(step)

    def loss(self, model: "ImageTextModel", pixels: torch.Tensor, tokens: "TextTokens", keys: torch.Tensor,
             texts: Sequence[str] | None = None, inspect: bool = False) -> torch.Tensor:
        return self.reference_loss(model, pixels, tokens, keys, texts)

    def image_attack_loss(self, model: "ImageTextModel", tokens: "TextTokens", keys: torch.Tensor,
                          texts: Sequence[str] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """pixels -> the references' LM loss (what untargeted PGD maximises): the same references
        as `loss` (with `texts`, the table's extras leave out the captions already scored)."""

        def loss(pixels: torch.Tensor) -> torch.Tensor:
            return self.reference_loss(model, pixels, tokens, keys, texts)

        return loss

    def text_attack(self, model: "ImageTextModel", config: Any):
        """MAT's inner text attack: reference-caption word substitutions maximising the LM loss."""
        budget = int(getattr(config, "word_budget", 1))
        if budget == 0:
            return None
        from train.attacks.captioning import ReferenceTextAttack

        candidates = getattr(config, "text_candidates", "mlm")
        return ReferenceTextAttack(model, budget=budget, candidates="wordnet" if candidates == "wordnet" else "mlm",
                                   mlm=getattr(config, "mlm", None) or "default",
                                   top_k=int(getattr(config, "top_k", 10)))


def references_from_train_data(data) -> list[list[str]]:
    """Every caption of each train image (its source captions, then its pools' text views): the
    reference table of MAT+ (`CaptioningTask.set_references`), indexed by key."""
    table = [list(captions) for captions in data.captions]
    for pool in data.pools:
        for row, modality in enumerate(pool.modality):
            caption = pool.caption[row]
            if modality == "text" and caption:  # a pair's caption describes its own new image
                table[int(pool.image_index[row])].append(caption)
    return [list(dict.fromkeys(captions)) for captions in table]
