"""The task interface: a task owns its training loss, its attack loss and its MAT text attack.

Its evaluation (attacks by name, metrics, reports) lives in `train/` per task: `train/evaluate.py`
(retrieval), `train/evaluate_captioning.py`, `train/evaluate_grounding.py` (README: Adding a task).

The training methods (`train/methods.py`: clean, tecoa, fare, mat, mat+) are written once over
this interface:

* clean:  loss(model, pixels, tokens, keys)
* tecoa:  PGD maximising image_attack_loss, then loss on (adversarial image, clean text)
* mat:    the task's text attack, then PGD against the attacked text, then loss on both
* mat+:   mat on views drawn from 1:N pools (the data differs, not the task)

`loss` runs inside the one forward call that DDP wraps (`TaskForward`), so it may use any part
of the model (ITC, ITM, the language-model head) with gradients. `attack_loss` is what the
inner maximisation of adversarial training maximises; it needs input gradients only.
`image_attack_loss` returns it as a function of the pixels alone, so the text side is encoded
once per attack, not once per PGD step.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from models.base import ImageTextModel, TextTokens


class Task(ABC):
    name: ClassVar[str] = ""
    model_kind: ClassVar[str] = "retrieval"  # the ImageTextModel.kind this task needs
    methods: ClassVar[tuple[str, ...]] = ("clean", "tecoa", "fare", "mat", "mat+")

    def __init__(self, rank: int = 0, world_size: int = 1, **options: Any):
        self.rank, self.world_size = int(rank), int(world_size)
        self.options = options

    @classmethod
    def options_from_config(cls, config: Any) -> dict[str, Any]:
        """This task's constructor options from a training config (`train.config.TrainConfig`):
        the trainer builds every task alike, so a task with settings of its own names them here."""
        return {}

    def check_model(self, model: "ImageTextModel") -> None:
        """Raise ValueError with one line when `model` cannot do this task."""
        if model.kind != self.model_kind:
            from models.base import KINDS

            raise ValueError(f"the {self.name} task needs {KINDS.get(self.model_kind, self.model_kind)}; "
                             f"'{model.name}' ({model.family}) is {KINDS.get(model.kind, model.kind)}")

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise ValueError(f"the {self.name} task trains with {', '.join(self.methods)}, not {method}")

    @property
    def gradient_scale(self) -> float:
        """Factor on the loss before backward: the world size when the loss is computed over the
        gathered global batch (DDP then averages gradients), else 1."""
        return 1.0

    @abstractmethod
    def loss(self, model: "ImageTextModel", pixels: torch.Tensor, tokens: "TextTokens", keys: torch.Tensor,
             texts: Sequence[str] | None = None, inspect: bool = False) -> torch.Tensor:
        """Training loss (scalar, with parameter gradients) of row-aligned pairs; `keys` [B]: the
        source image of each row (rows with equal keys are positives of each other). `inspect`:
        the loss is only looked at (logged, or a second chunk of the same step), so it must not
        change training state (e.g. push features into a momentum queue)."""

    def prepare_training(self, data: Any, method: str) -> None:
        """Called once with the training data (`train.data.TrainData`) before the first step
        (e.g. captioning's table of every image's reference captions for MAT+)."""

    def train_transform(self, model: "ImageTextModel"):
        """PIL image -> [0, 1] tensor for training pairs (default: the model's own train transform)."""
        return model.preprocess_train

    def on_step(self, model: "ImageTextModel", step: int, steps_per_epoch: int) -> None:
        """Called before every optimizer step (schedules inside the loss, e.g. ALBEF's alpha warm-up)."""

    @abstractmethod
    def image_attack_loss(self, model: "ImageTextModel", tokens: "TextTokens", keys: torch.Tensor,
                          texts: Sequence[str] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """pixels -> scalar that the inner image attack (PGD) of adversarial training maximises,
        against the captions `tokens` (encoded once, here; `texts`: the same captions as strings,
        as `loss` takes them)."""

    def text_attack(self, model: "ImageTextModel", config: Any):
        """MAT's inner word-substitution attack (an Attack from train/attacks), or None."""
        return None


class TaskForward(nn.Module):
    """What DDP wraps: one forward per micro step, computing the task's loss of one or more
    equal chunks of the batch (e.g. adversarial and clean halves) in the same call."""

    def __init__(self, model: "ImageTextModel", task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, pixels: torch.Tensor, tokens: "TextTokens | None" = None, keys: torch.Tensor | None = None,
                chunks: int = 1, texts: Sequence[str] | None = None,
                image_embeddings: bool = False) -> list[torch.Tensor]:
        if image_embeddings:  # FARE: unnormalised image embeddings of each chunk, with gradients
            return list(self.model.encode_image(pixels, normalize=False).chunk(chunks))
        size = len(pixels) // chunks
        losses = []
        for c in range(chunks):
            part = slice(c * size, (c + 1) * size)
            chunk_texts = list(texts)[part] if texts is not None else None
            losses.append(self.task.loss(self.model, pixels[part], tokens[part], keys[part], chunk_texts, inspect=c > 0))
        return losses
