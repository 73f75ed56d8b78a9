"""The Co-Attack code's attacks on the multimodal (fused) embedding of ALBEF and TCL.

The Co-Attack paper attacks ALBEF/TCL two ways: the unimodal embeddings (`RetrievalEval.py --cls`,
`train.attacks.unprojected`) and the multimodal embedding, the fusion encoder's output for an
(image, caption) pair (`RetrievalFusionEval.py`). This module is the second
(`--attacked-embedding multimodal|multimodal-cls` with `--protocol co-attack`). Each attack
reads, for every (image, caption) pair, the fusion encoder's last hidden states: all of them
flattened (`reading="sequence"`: the script's default, without `--cls`, its README eliding the flags; the
caption padded to 30 tokens, so the padding positions' states count, as there) or the fused
[CLS] state (`reading="cls"`: with `--cls`). Captions are tokenised as the model tokenises them
(at most 30 tokens); an evaluation whose captions are already cleaned (`pre_caption`, as under
`co-attack`, or `blip_pre_caption`) has the model read them as given (`ImageTextModel.captions_as_given`), as the code
does. Distances are the code's KL divergence between softmaxed embeddings
(`train.attacks.base.kl_to`).

* `FusedPGD` (`--adv 2`): each pair's copy of its image pushed away from the pair's clean fused
  embedding, the caption fixed.
* `FusedTextAttack` (`--adv 1`, `BertAttackFusion`): BERT-Attack's greedy search, word importance
  and candidates scored by the KL between the pair's clean fused embedding and the one with the
  masked or substituted caption, the clean image fixed.
* `FusedSepAttack` (`--adv 3`): both, independently.
* `FusedCoAttack` (`--adv 4`): the text first; then each pair's image copy maximises
  KL(clean image + attacked caption || adv image + attacked caption)
  + alpha * KL(clean image + clean caption || adv image + attacked caption).

The code attacks (image, caption) pairs one by one (its `pair_dataset`), so an image with five
captions is attacked five times and its last copy is the one evaluated; here every copy is
attacked in one batch and each image's last copy kept (`multimodal.attack_pair_copies`).
Image steps follow the Co-Attack code's schedule (step eps / steps x 1.25, start in [0, eps]),
given by the `PGD` part. A KL away from the clean pair has no gradient at the clean image, so
without the random start (`random_start=False`) the first step follows float rounding, in the code
as here. With `--reference-bugs` the text attack feeds the image encoder pixels
without normalisation, as the code's `MultiModalAttacker.run` hands `BertAttackFusion` the raw
images (`REFERENCE_BUGS["fused-text-pixels"]`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from models.base import TextTokens
from train.attacks.base import Attack, AttackResult, default_pairing, kl_to
from train.attacks.multimodal import CO_ATTACK_ALPHA, attack_pair_copies
from train.attacks.pgd import PGD
from train.attacks.substitutes import SubstituteSource
from train.attacks.text import DEFAULT_TEXT_BATCH, Score, round_fill, substitute_words

READINGS = ("sequence", "cls")
# the fused `AttackSettings.attacked_embedding` values -> reading
READING_OF = {"multimodal": "sequence", "multimodal-cls": "cls"}
# the code tokenises every caption it attacks with `max_length=30` (`padding='max_length'`)
REFERENCE_MAX_TOKENS = 30


def fit_tokens(tokens: TextTokens, length: int, pad_id: int, pad: bool = True) -> TextTokens:
    """`tokens` cut to `length` and (`pad`) padded on the right to it."""
    ids, mask = tokens.input_ids[:, :length], tokens.attention_mask[:, :length]
    extra = length - ids.shape[1]
    if pad and extra > 0:
        ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    return TextTokens(ids, mask)


class FusedVictim:
    """A fusion model (ALBEF, TCL) read as the fused-embedding attacks read it: one embedding per
    row-aligned (image, caption) pair."""

    def __init__(self, model, reading: str = "sequence", unnormalised_text_pixels: bool = False):
        if reading not in READINGS:
            raise ValueError(f"unknown fused reading {reading!r}; expected one of {READINGS}")
        if not callable(getattr(model, "fusion_states", None)):
            raise ValueError(f"{getattr(model, 'name', '') or getattr(model, 'family', type(model).__name__)} has no "
                             "fusion encoder states to attack (--attacked-embedding needs ALBEF or TCL)")
        self.model, self.reading = model, reading
        self.unnormalised_text_pixels = unnormalised_text_pixels
        self.embeddings_from = "fusion-encoder" if reading == "sequence" else "fusion-encoder-cls"

    @property
    def device(self) -> torch.device:
        return self.model.device

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(pixels)

    def text_attack_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image features the text attack reads: the images' own, or (the reference bug) those of
        pixels the encoder sees without normalisation (x * std + mean normalises back to x)."""
        if not self.unnormalised_text_pixels:
            return self.image_features(pixels)
        mean = torch.as_tensor(self.model.mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        std = torch.as_tensor(self.model.std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        return self.image_features(pixels * std + mean)

    def embed(self, image_features: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] fused embeddings of pairs (image_features[i], texts[i])."""
        # the padding positions' states are part of the flattened sequence; the [CLS] state ignores them
        tokens = fit_tokens(self.model.tokenize(list(texts)), REFERENCE_MAX_TOKENS, self.model.tokenizer.pad_token_id or 0,
                            pad=self.reading == "sequence")
        states = self.model.fusion_states(image_features, tokens)
        return states[:, 0, :] if self.reading == "cls" else states.flatten(1)


class FusedAttack(Attack):
    """Base of the fused-embedding attacks: `victim` is a `FusedVictim`."""

    def params(self) -> dict:
        params = super().params()
        params.pop("loss")  # each objective is the code's KL, reported by the attack
        return params


def _image_params(image_attack: PGD, objective: str) -> dict:
    params = image_attack.params()
    params.pop("embeddings_from", None)
    return {**params, "loss": objective}


class FusedPGD(FusedAttack):
    """Each pair's image copy away from the pair's clean fused embedding (the caption fixed)."""

    modality = "image"
    name = "pgd"
    objective = "KL(clean image + caption || adv image + caption), fused"

    def __init__(self, victim: FusedVictim, image_attack: PGD):
        super().__init__(victim)
        self.image_attack = image_attack

    def params(self) -> dict:
        return {**super().params(), **_image_params(self.image_attack, self.objective)}

    def perturb(self, images: torch.Tensor, texts: list[str], pairing: torch.Tensor) -> torch.Tensor:
        if not texts:
            return images.clone()
        with torch.no_grad():
            clean = self.victim.embed(self.victim.image_features(images)[pairing.to(images.device)], texts)
        return attack_pair_copies(self.image_attack, images, pairing,
                                  lambda adv: kl_to(clean, self.victim.embed(self.victim.image_features(adv), texts)).mean())

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        adversarial = self.perturb(images, list(texts), pairing)
        return AttackResult(images=adversarial, texts=list(texts), info={"linf": float((adversarial - images).abs().max())})


class FusedTextAttack(FusedAttack):
    """BERT-Attack on the fused embedding (`BertAttackFusion`): importance and candidates scored by
    KL(clean image + clean caption || clean image + changed caption)."""

    modality = "text"
    name = "word-substitution"

    def __init__(self, victim: FusedVictim, substitutes: SubstituteSource, budget: int = 1, words_per_round: int = 1,
                 text_batch: int = DEFAULT_TEXT_BATCH, name: str = "bert-attack"):
        super().__init__(victim)
        if budget < 0 or words_per_round < 1 or text_batch < 1:
            raise ValueError("budget must be >= 0, words_per_round and text_batch >= 1")
        self.source, self.budget, self.words_per_round, self.text_batch = substitutes, budget, words_per_round, text_batch
        self.name = name

    def params(self) -> dict:
        return {**super().params(), **self.source.params(), "budget": self.budget, "guide": "fused-kl",
                "importance": "fused-kl", "words_per_round": self.words_per_round,
                "unnormalised_image": self.victim.unnormalised_text_pixels}

    @torch.no_grad()
    def score_function(self, texts: Sequence[str], image_features: torch.Tensor, pairing: torch.Tensor) -> Score:
        """The search's score, to maximise: (candidates, owners) -> [C] KL(clean image + clean caption ||
        clean image + candidate), caption t (and its candidates) read with `image_features[pairing[t]]`."""
        image_of = pairing.to(image_features.device)

        def embed(captions: list[str], owners: list[int]) -> torch.Tensor:
            rows = image_of[torch.tensor(owners, device=image_features.device)]
            return torch.cat([self.victim.embed(image_features[rows[i:i + self.text_batch]], captions[i:i + self.text_batch])
                              for i in range(0, len(captions), self.text_batch)])

        clean = embed(list(texts), list(range(len(texts))))

        def moved(captions: list[str], owners: list[int]) -> torch.Tensor:
            return kl_to(clean[owners], embed(captions, owners))

        return moved

    @torch.no_grad()
    def perturb(self, texts: Sequence[str], image_features: torch.Tensor,
                pairing: torch.Tensor) -> tuple[list[str], list[list[dict]]]:
        """(adversarial captions, per caption the words changed): BERT-Attack's search, importance and
        candidates both by `score_function`."""
        texts = list(texts)
        if self.budget == 0 or not texts:
            return texts, [[] for _ in texts]
        score = self.score_function(texts, image_features, pairing)
        return substitute_words(texts, self.source, score, self.budget, self.words_per_round,
                                fill=round_fill(self.victim.device, self.text_batch))

    def against_images(self, images: torch.Tensor, texts: Sequence[str], pairing: torch.Tensor) -> tuple[list[str], list]:
        """`perturb` with caption t read beside the clean image `images[pairing[t]]`."""
        with torch.no_grad():
            features = self.victim.text_attack_features(images)
        return self.perturb(texts, features, pairing)

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        adversarial, changes = self.against_images(images, texts, default_pairing(len(images), len(texts), image_of_text))
        return AttackResult(images=images, texts=adversarial, info={"words_changed": changes})


class _FusedMultimodal(FusedAttack):
    modality = "multimodal"

    def __init__(self, victim: FusedVictim, image_attack: PGD, text_attack: FusedTextAttack):
        super().__init__(victim)
        self.image_attack, self.text_attack = image_attack, text_attack

    @staticmethod
    def result(images: torch.Tensor, adversarial: torch.Tensor, texts: list[str], changes: list) -> AttackResult:
        linf = float((adversarial - images).abs().max()) if len(images) else 0.0
        return AttackResult(images=adversarial, texts=texts, info={"words_changed": changes, "linf": linf})


class FusedSepAttack(_FusedMultimodal):
    """`FusedPGD` and `FusedTextAttack`, each against the clean other modality."""

    name = "sep"

    def params(self) -> dict:
        return {**super().params(), "image": _image_params(self.image_attack, FusedPGD.objective),
                "text": self.text_attack.params()}

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        texts = list(texts)
        adversarial = FusedPGD(self.victim, self.image_attack).perturb(images, texts, pairing)
        adversarial_texts, changes = self.text_attack.against_images(images, texts, pairing)
        return self.result(images, adversarial, adversarial_texts, changes)


def fused_co_attack_objective(adversarial_emb: torch.Tensor, attacked_caption_emb: torch.Tensor, clean_pair_emb: torch.Tensor,
                              alpha: float) -> torch.Tensor:
    """[N] the Co-Attack code's fused image objective (`MultiModalAttacker.run`, adv 4), to maximise:
    KL(clean image + attacked caption || adv) + alpha * KL(clean image + clean caption || adv)."""
    return kl_to(attacked_caption_emb, adversarial_emb) + alpha * kl_to(clean_pair_emb, adversarial_emb)


class FusedCoAttack(_FusedMultimodal):
    """The text first, then each pair's image copy against `fused_co_attack_objective`."""

    name = "co-attack"
    objective = ("KL(clean image + attacked caption || adv image + attacked caption) + alpha * "
                 "KL(clean image + caption || adv image + attacked caption), fused")

    def __init__(self, victim: FusedVictim, image_attack: PGD, text_attack: FusedTextAttack, alpha: float = CO_ATTACK_ALPHA):
        super().__init__(victim, image_attack, text_attack)
        self.alpha = alpha

    def params(self) -> dict:
        return {**super().params(), "alpha": self.alpha, "image": _image_params(self.image_attack, self.objective),
                "text": self.text_attack.params()}

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        texts = list(texts)
        adversarial_texts, changes = self.text_attack.against_images(images, texts, pairing)
        if not texts:
            return self.result(images, images.clone(), adversarial_texts, changes)
        with torch.no_grad():
            clean_features = self.victim.image_features(images)[pairing.to(images.device)]
            clean_pair = self.victim.embed(clean_features, texts)
            attacked_caption = self.victim.embed(clean_features, adversarial_texts)

        def objective(adversarial: torch.Tensor) -> torch.Tensor:
            embedding = self.victim.embed(self.victim.image_features(adversarial), adversarial_texts)
            return fused_co_attack_objective(embedding, attacked_caption, clean_pair, self.alpha).mean()

        return self.result(images, attack_pair_copies(self.image_attack, images, pairing, objective), adversarial_texts,
                           changes)
