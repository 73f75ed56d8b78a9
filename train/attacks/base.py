"""The one attack interface shared by training and evaluation.

Every attack is a small class built on a victim model, with one call signature
(in the spirit of torchattacks)::

    attack = PGD(victim, eps=2 / 255, steps=10)
    result = attack(images, texts, image_of_text)      # -> AttackResult

* `images`: float tensor [B, 3, H, W], pixels in [0, 1] BEFORE normalisation (the perturbation
  budget is defined on pixels; the victim normalises inside).
* `texts`: list of T captions.
* `image_of_text`: long tensor [T] giving the image index of each caption; `None` means 1:1
  pairs (T == B, caption i belongs to image i). Evaluation passes every caption of every image;
  SGA uses it to find each image's caption set. The trainer's MAT text attack passes None (each
  caption scored against its own row's image); its PGD and outer loss group rows by source image.

Attacks maximise an attack loss (`loss=`): `"pair"` (default; push each image away from its
own captions and vice versa, as the attack papers do) or `"contrastive"` (the batch's image-text
InfoNCE loss with multi-positive targets, `tasks.retrieval.softmax_itc_loss`, as
MAT's inner maximisation does).

Victims: attacks use only `encode_image(pixels)`, `encode_text(list_of_str)`, `device` and
`logit_scale` of the victim: any `models.base.VisionLanguageModel` (every family).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from train.attacks.settings import LOSSES


@dataclass
class AttackResult:
    images: torch.Tensor  # adversarial pixels in [0, 1], same shape as the input
    texts: list[str]  # adversarial captions, same order as the input
    # e.g. {"words_changed": [[{"position", "from", "to"}, ...] per caption]}: the evaluation reads it
    # for a text attack's budget and truth check; an attack that keeps none gets it by `words_changed_of`
    info: dict = field(default_factory=dict)


def word_changes(original: str, attacked: str) -> list[dict]:
    """The words `attacked` changed of `original` as the built-in text attacks record them
    ({"position", "from", "to"}; an inserted or deleted word has "" on its other side), by a
    word-level diff: for an attack that records no changes of its own."""
    import difflib

    before, after = original.split(), attacked.split()
    changes: list[dict] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            changes.append({"position": i1 + k, "from": before[i1 + k] if i1 + k < i2 else "",
                            "to": after[j1 + k] if j1 + k < j2 else ""})
    return changes


def words_changed_of(result: "AttackResult", texts: Sequence[str], name: str) -> list[list[dict]]:
    """Per caption, the words a text attack changed: its own `info["words_changed"]`, or a word diff of
    `result.texts` against `texts` when it keeps none (a user's attack without it was reported as
    changing no caption, failed the truth check and refused its own resume files)."""
    recorded = result.info.get("words_changed")
    if recorded is None:
        if len(result.texts) != len(texts):
            raise ValueError(f"attack {name!r} returned {len(result.texts)} captions for {len(texts)}")
        return [word_changes(before, after) for before, after in zip(texts, result.texts)]
    if len(recorded) != len(texts):
        raise ValueError(f"attack {name!r}: info['words_changed'] has {len(recorded)} entries for {len(texts)} "
                         "captions (one list of changes per caption)")
    return recorded


def default_pairing(num_images: int, num_texts: int, image_of_text: torch.Tensor | None) -> torch.Tensor:
    if image_of_text is None:
        if num_images != num_texts:
            raise ValueError(f"{num_images} images and {num_texts} texts: pass image_of_text to pair them")
        return torch.arange(num_texts)
    if len(image_of_text) != num_texts:
        raise ValueError(f"image_of_text has {len(image_of_text)} entries for {num_texts} texts")
    return torch.as_tensor(image_of_text, dtype=torch.long)


def positives_matrix(image_of_text: torch.Tensor, num_images: int) -> torch.Tensor:
    """[B, T] boolean: image i and caption t are a true pair."""
    return F.one_hot(image_of_text.cpu(), num_images).T.bool()


def pair_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, image_of_text: torch.Tensor) -> torch.Tensor:
    """Mean similarity of every true pair, negated: maximising it pulls pairs apart."""
    sims = (image_emb[image_of_text.to(image_emb.device)] * text_emb).sum(-1)
    return -sims.mean()


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, image_of_text: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """The training loss (multi-positive InfoNCE) of a batch where caption t belongs to image `image_of_text[t]`."""
    from tasks.retrieval import multi_positive_targets, softmax_itc_loss

    image_of_text = image_of_text.to(image_emb.device)
    image_keys = torch.arange(image_emb.shape[0], device=image_emb.device)
    logits = logit_scale * image_emb.float() @ text_emb.float().T
    return softmax_itc_loss(logits, multi_positive_targets(image_keys, image_of_text))


def kl_to(reference_emb: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """[N] KL(softmax(reference) || softmax(emb)) over the embedding dimensions, row by row.

    The reference codes' distance between embeddings (Co-Attack's image and text terms, the
    BERT-Attack importance and candidate scores): `KLDivLoss(emb.log_softmax, reference.softmax)`.
    """
    return F.kl_div(emb.float().log_softmax(dim=-1), reference_emb.float().log_softmax(dim=-1),
                    reduction="none", log_target=True).sum(-1)


# which embeddings an attack reads: unit vectors, or the victim's before normalisation ("raw": the
# reference codes' KL scores over their wrappers' `text_embed` / ALBEF's [CLS] states)
EMBEDDINGS = ("unit", "raw")


def image_encoder(victim, embedding: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`victim.encode_image` reading `embedding` ("unit" or "raw"); for unit embeddings called without
    the keyword, so a duck-typed victim need not take `normalize`."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}; expected one of {EMBEDDINGS}")
    if embedding == "unit":
        return victim.encode_image
    return lambda pixels: victim.encode_image(pixels, normalize=False)


def attack_loss_fn(loss: str, logit_scale) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == "pair":
        return pair_loss
    if loss == "contrastive":
        return lambda i, t, p: contrastive_loss(i, t, p, logit_scale)
    raise ValueError(f"unknown attack loss {loss!r}; expected one of {LOSSES}")


def attack_parts(attack) -> tuple:
    """The attack and the attacks it runs (a multimodal attack's `image_attack` and `text_attack`),
    where their random generators and substitute sources are found; a wrapper's (`wrapped`) included."""
    wrapped = getattr(attack, "wrapped", None)
    if wrapped is not None:
        return (attack, *attack_parts(wrapped))
    return tuple(part for part in (attack, getattr(attack, "image_attack", None), getattr(attack, "text_attack", None))
                 if part is not None)


class Attack(ABC):
    """Base class: `Cls(victim, **params)(images, texts, image_of_text) -> AttackResult`."""

    modality: str = ""  # "image", "text" or "multimodal"
    name: str = ""
    # set where the attack reads other embeddings than its victim says (a fallback its report must show)
    embeddings_from: str | None = None

    def __init__(self, victim, loss: str = "pair"):
        if loss not in LOSSES:
            raise ValueError(f"unknown attack loss {loss!r}; expected one of {LOSSES}")
        self.victim = victim
        self.loss = loss

    @abstractmethod
    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        ...

    def params(self) -> dict:
        """The attack's settings, for reports (`embeddings_from`: where a victim read other than by
        its ITC embeddings takes them from, `train.attacks.unprojected`)."""
        embeddings_from = self.embeddings_from or getattr(self.victim, "embeddings_from", None)
        return {"loss": self.loss, "embeddings_from": embeddings_from} if embeddings_from else {"loss": self.loss}


class NoAttack(Attack):
    """The identity: clean images and captions (the `clean` row of an evaluation)."""

    modality = "none"
    name = "clean"

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        return AttackResult(images=images, texts=list(texts), info={})
