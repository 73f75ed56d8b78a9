"""Attacks on captioners (a `models.CaptioningModel` victim), with the shared attack signature.

    attack = CaptionPGD(captioner, eps=2 / 255, steps=10)
    result = attack(images, references, image_of_text)      # -> AttackResult

`texts` are the REFERENCE captions of the images (`image_of_text` maps each to its image, as
for retrieval); what the attacks maximise is the language-model loss of those references given
the image (and the prompt), i.e. they make the true captions unlikely:

* `CaptionPGD` ("pgd"): L-inf PGD on [0, 1] pixels maximising the mean LM loss of every
  reference of each image (untargeted; eps 2/255, 10 steps of 0.5/255 by default).
* `TargetedCaptionPGD` ("pgd-targeted"): PGD MINIMISING the LM loss of a given target caption
  (one for all images, or one per image): the captioner is pushed to say the target.
* `PromptAttack` ("prompt"): for prompted captioners (BLIP's "a picture of "), the prompt's
  words are substituted (BERT-Attack's greedy search, `word_budget` words) to maximise the
  references' LM loss; the attacked prompt of each image is returned in `info["prompts"]`.
* `PromptPGD` ("prompt-pgd"): both: the prompt attack first, then PGD against the attacked
  prompt (MAT's text-then-image order).
* `ReferenceTextAttack`: the reference captions themselves substituted to maximise their own
  LM loss given the image: MAT's inner text attack for captioners (training only: a captioner
  does not read references, so it changes no generated caption).

Word substitutions are `train.attacks.text.substitute_words`: the one BERT-Attack greedy search
(substitute sources, importance by masking, best substitute per position) the retrieval and
grounding text attacks use too; only the score differs (LM loss instead of embedding similarity).
"""
from __future__ import annotations

from typing import Sequence

import torch

from train.attacks.base import Attack, AttackResult, default_pairing
from train.attacks.pgd import pgd_linf
from train.attacks.settings import pgd_step_size
from train.attacks.substitutes import (DEFAULT_MLM_BATCH, MaskedLMSubstitutes, NoSubstitutes, SubstituteSource,
                                      WordNetSubstitutes, load_masked_lm)
from train.attacks.text import round_fill, substitute_words

CAPTION_ATTACK_NAMES = ("clean", "pgd", "pgd-targeted", "prompt", "prompt-pgd")
PROMPT_ATTACKS = ("prompt", "prompt-pgd")  # those that attack the prompt: for prompted captioners only
DEFAULT_TARGET = "a black triangle"  # a caption the sample world's truth checker can judge
DEFAULT_LOSS_BATCH = 64  # (image, caption) pairs per LM-loss forward when scoring candidates
# words the prompt attack never replaces nor proposes: none. BERT-Attack skips stop words so that an
# attacked caption keeps its meaning for a reader; a prompt states nothing about the image, and its
# function words are what the caption continues ("a picture of" -> "a ..."): with BERT-Attack's
# list, "a picture of" has one replaceable word ("picture"), which a captioner may well ignore
PROMPT_SKIPPED_WORDS: frozenset[str] = frozenset()


def _check_victim(victim) -> None:
    if getattr(victim, "kind", None) != "captioning":
        raise ValueError(f"captioning attacks need a captioning model, not {type(victim).__name__}")


@torch.no_grad()
def lm_losses(victim, pixels: torch.Tensor | None, texts: Sequence[str], prompts: Sequence[str] | None = None,
              batch_size: int = DEFAULT_LOSS_BATCH, *, rows: torch.Tensor | Sequence[int] | None = None,
              features: torch.Tensor | None = None) -> torch.Tensor:
    """[len(texts)] LM loss of each caption given its row of `pixels` (and prompt), no gradients.

    With `rows`, caption i is scored against image `rows[i]` of `pixels`, or of `features` (the
    victim's `image_features`, when already computed): each image goes through the vision tower
    once, not once per caption (at BLIP's 384 px that tower is most of a candidate's cost)."""
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.long)
        if features is None:
            features = victim.image_features(pixels)
    out = []
    for start in range(0, len(texts), batch_size):
        part = slice(start, start + batch_size)
        chunk_prompts = list(prompts[part]) if prompts is not None else None
        tokens = victim.tokenize(list(texts[part]), prompts=chunk_prompts) if chunk_prompts is not None \
            else victim.tokenize(list(texts[part]))
        if rows is None:
            out.append(victim.caption_loss(pixels[part], tokens, reduction="none").float())
        else:
            out.append(victim.caption_loss(None, tokens, reduction="none", rows=rows[part], features=features).float())
    return torch.cat(out) if out else torch.empty(0)


class CaptionAttack(Attack):
    """Base of the captioning attacks: a captioner victim; objective = the references' LM loss."""

    def __init__(self, victim):
        _check_victim(victim)
        self.victim = victim
        self.objective = "lm-loss"

    def params(self) -> dict:
        return {"objective": self.objective}


class CaptionPGD(CaptionAttack):
    """Untargeted PGD: maximise the mean LM loss of every reference caption of each image."""

    modality = "image"
    name = "pgd"

    def __init__(self, victim, eps: float = 2 / 255, steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, generator: torch.Generator | None = None):
        super().__init__(victim)
        self.eps, self.steps, self.random_start = eps, steps, random_start
        self.step_size = pgd_step_size(eps, step_size)
        self.generator = generator

    def params(self) -> dict:
        return {**super().params(), "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start}

    def perturb(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor,
                prompts: Sequence[str] | None = None, sign: float = 1.0) -> torch.Tensor:
        """Images maximising `sign` x mean LM loss of `texts` (prompts: one per image, optional)."""
        rows = torch.as_tensor(image_of_text, dtype=torch.long, device=images.device)
        text_prompts = [prompts[i] for i in rows.tolist()] if prompts is not None else None  # one device sync
        tokens = self.victim.tokenize(list(texts), prompts=text_prompts) if text_prompts is not None \
            else self.victim.tokenize(list(texts))

        def loss(adv: torch.Tensor) -> torch.Tensor:  # each image through the vision tower once
            return sign * self.victim.caption_loss(adv, tokens, reduction="mean", rows=rows)

        return pgd_linf(images, loss, self.eps, self.steps, self.step_size, self.random_start, self.generator)

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        adversarial = self.perturb(images, texts, pairing)
        return AttackResult(images=adversarial, texts=list(texts),
                            info={"linf": float((adversarial - images).abs().max())})


class TargetedCaptionPGD(CaptionPGD):
    """Targeted PGD: minimise the LM loss of `target` (one caption, or one per image)."""

    name = "pgd-targeted"

    def __init__(self, victim, target: str | Sequence[str] = DEFAULT_TARGET, **pgd):
        super().__init__(victim, **pgd)
        self.target = target
        self.objective = "target-lm-loss"

    def params(self) -> dict:
        target = self.target if isinstance(self.target, str) else list(self.target)
        return {**super().params(), "target": target}

    def targets_for(self, count: int) -> list[str]:
        if isinstance(self.target, str):
            return [self.target] * count
        if len(self.target) != count:
            raise ValueError(f"{len(self.target)} target captions for {count} images")
        return list(self.target)

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        targets = self.targets_for(len(images))
        adversarial = self.perturb(images, targets, torch.arange(len(images)), sign=-1.0)
        return AttackResult(images=adversarial, texts=list(texts),
                            info={"linf": float((adversarial - images).abs().max()), "targets": targets})


# ----------------------------------------------------------------------------- word substitutions


def substitute_source(victim, candidates: str = "mlm", mlm: str | tuple = "default", top_k: int = 10,
                      max_length: int = 30, mlm_batch: int = DEFAULT_MLM_BATCH) -> SubstituteSource:
    """The substitute words: a masked LM's top-k ("mlm", BERT-Attack) or WordNet synonyms."""
    if candidates == "wordnet":
        return WordNetSubstitutes(top_k=top_k, max_length=max_length)
    if candidates != "mlm":
        raise ValueError(f"unknown text candidates {candidates!r}; expected 'mlm' or 'wordnet'")
    model, tokenizer, model_id = load_masked_lm(mlm, victim.device, victim)
    return MaskedLMSubstitutes(model, tokenizer, top_k=top_k, max_length=max_length, batch_size=mlm_batch,
                               model_id=model_id)


class _WordAttack(CaptionAttack):
    """Shared settings of the word-substitution attacks on captioners."""

    def __init__(self, victim, source: SubstituteSource | None = None, budget: int = 1, words_per_round: int = 1,
                 loss_batch: int = DEFAULT_LOSS_BATCH, **source_options):
        super().__init__(victim)
        if budget < 0 or words_per_round < 1 or loss_batch < 1:
            raise ValueError("budget must be >= 0, words_per_round and loss_batch >= 1")
        if source is None:  # a budget of 0 reads no substitute: none is loaded
            source = NoSubstitutes() if budget == 0 else substitute_source(victim, **source_options)
        self.source = source
        self.budget, self.words_per_round, self.loss_batch = budget, words_per_round, loss_batch

    def params(self) -> dict:
        return {**super().params(), **self.source.params(), "budget": self.budget,
                "words_per_round": self.words_per_round}


class ReferenceTextAttack(_WordAttack):
    """Substitute words of each reference caption to maximise its own LM loss given its image."""

    modality = "text"
    name = "reference-text"

    def perturb(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor,
                prompts: Sequence[str] | None = None) -> tuple[list[str], list[list[dict]]]:
        rows = torch.as_tensor(image_of_text, dtype=torch.long)
        with torch.no_grad():  # once: every candidate of a caption shares its image
            features = self.victim.image_features(images)

        def score(candidates: list[str], owners: list[int]) -> torch.Tensor:
            candidate_prompts = [prompts[i] for i in rows[owners].tolist()] if prompts is not None else None
            return lm_losses(self.victim, None, candidates, candidate_prompts, self.loss_batch,
                             rows=rows[owners], features=features)

        return substitute_words(texts, self.source, score, self.budget, self.words_per_round,
                                fill=round_fill(images.device, self.loss_batch))

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        adversarial, changes = self.perturb(images, texts, pairing)
        return AttackResult(images=images, texts=adversarial, info={"words_changed": changes})


class PromptAttack(_WordAttack):
    """Substitute words of each image's prompt to maximise the mean LM loss of its references.

    Every word of the prompt may be replaced, function words included, and by any word the source
    proposes (`skipped_words`: words left alone and never proposed; default none, see
    `PROMPT_SKIPPED_WORDS`). A `source` given ready keeps its own stop-word list.
    """

    modality = "text"
    name = "prompt"

    def __init__(self, victim, source: SubstituteSource | None = None, *,
                 skipped_words: frozenset[str] | set[str] = PROMPT_SKIPPED_WORDS, **options):
        super().__init__(victim, source, **options)
        self.skipped_words = None  # None: the given source's own stop words
        if source is None:
            self.skipped_words = frozenset(skipped_words)
            self.source.stop_words = self.skipped_words

    def params(self) -> dict:
        skipped = sorted(self.skipped_words) if self.skipped_words is not None else "source stop words"
        return {**super().params(), "skipped_words": skipped}

    def perturb(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor) -> tuple[list[str], list[list[dict]]]:
        prompt = getattr(self.victim, "prompt", None)
        if not prompt:
            raise ValueError(f"the prompt attack needs a prompted captioner; '{self.victim.name}' has no prompt "
                             "(load it with prompt=..., e.g. 'a picture of')")
        rows = torch.as_tensor(image_of_text, dtype=torch.long).tolist()
        references = [[t for t, r in zip(texts, rows) if r == image] for image in range(len(images))]
        with torch.no_grad():  # once: every candidate prompt of an image shares it
            features = self.victim.image_features(images)

        def score(candidates: list[str], owners: list[int]) -> torch.Tensor:
            # every reference of the owner image under each candidate prompt, averaged
            pairs = [(c, image, ref) for c, image in enumerate(owners) for ref in references[image]]
            losses = lm_losses(self.victim, None, [p[2] for p in pairs], [candidates[p[0]] for p in pairs],
                               self.loss_batch, rows=[p[1] for p in pairs], features=features)
            counts = torch.tensor([len(references[image]) for image in owners], dtype=losses.dtype)
            owner_of_pair = torch.tensor([p[0] for p in pairs], dtype=torch.long)
            return torch.zeros(len(candidates), dtype=losses.dtype).index_add_(0, owner_of_pair, losses.cpu()) / counts

        return substitute_words([prompt] * len(images), self.source, score, self.budget, self.words_per_round,
                                fill=round_fill(images.device, self.loss_batch))

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        prompts, changes = self.perturb(images, texts, pairing)
        return AttackResult(images=images, texts=list(texts), info={"prompts": prompts, "prompt_changes": changes})


class PromptPGD(CaptionAttack):
    """The prompt attack, then PGD on the image against the attacked prompt (both together)."""

    modality = "multimodal"
    name = "prompt-pgd"

    def __init__(self, victim, prompt_attack: PromptAttack | None = None, image_attack: CaptionPGD | None = None):
        super().__init__(victim)
        self.prompt_attack = prompt_attack if prompt_attack is not None else PromptAttack(victim)
        self.image_attack = image_attack if image_attack is not None else CaptionPGD(victim)

    def params(self) -> dict:
        return {**super().params(), "prompt": self.prompt_attack.params(), "image": self.image_attack.params()}

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        prompts, changes = self.prompt_attack.perturb(images, texts, pairing)
        adversarial = self.image_attack.perturb(images, texts, pairing, prompts=prompts)
        return AttackResult(images=adversarial, texts=list(texts),
                            info={"linf": float((adversarial - images).abs().max()), "prompts": prompts,
                                  "prompt_changes": changes})


class NoCaptionAttack(CaptionAttack):
    """The identity (the `clean` row)."""

    modality = "none"
    name = "clean"

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        return AttackResult(images=images, texts=list(texts), info={})


def build_caption_attack(name: str, victim, *, eps: float = 2 / 255, steps: int = 10, step_size: float | None = None,
                         random_start: bool = True, seed: int | None = None, target: str | Sequence[str] = DEFAULT_TARGET,
                         candidates: str = "mlm", mlm: str | tuple = "default", top_k: int = 10, budget: int = 1,
                         max_length: int = 30, words_per_round: int = 1, mlm_batch: int = DEFAULT_MLM_BATCH,
                         loss_batch: int = DEFAULT_LOSS_BATCH, **_ignored) -> CaptionAttack:
    """A captioning attack by name (`CAPTION_ATTACK_NAMES`) from flat options (what commands pass).

    Options of the retrieval attacks that mean nothing here (guide, scales, ...) are ignored.
    """
    from train.attacks.settings import refuse_unknown_options

    refuse_unknown_options(_ignored, "captioning")  # retrieval's own options are ignored here, not misspelt ones
    if name not in CAPTION_ATTACK_NAMES:
        raise ValueError(f"unknown captioning attack {name!r}; expected one of {', '.join(CAPTION_ATTACK_NAMES)}")
    if name == "clean":
        return NoCaptionAttack(victim)

    def image_attack(cls=CaptionPGD, **extra) -> CaptionPGD:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return cls(victim, eps=eps, steps=steps, step_size=step_size, random_start=random_start, generator=generator, **extra)

    def prompt_attack() -> PromptAttack:
        return PromptAttack(victim, budget=budget, words_per_round=words_per_round, loss_batch=loss_batch,
                            candidates=candidates, mlm=mlm, top_k=top_k, max_length=max_length, mlm_batch=mlm_batch)

    if name == "pgd":
        return image_attack()
    if name == "pgd-targeted":
        return image_attack(TargetedCaptionPGD, target=target)
    if name == "prompt":
        return prompt_attack()
    return PromptPGD(victim, prompt_attack=prompt_attack(), image_attack=image_attack())
