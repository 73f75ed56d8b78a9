"""Word-substitution text attacks (BERT-Attack style), batched over captions and candidates.

One attack, two sources of substitute words:

* `BertAttack`: a masked language model's top-k predictions at each word (Li et al. 2020, as used
  by Co-Attack and SGA): any transformers masked LM (`augment.registry.load_mlm` names, e.g.
  `bert-base-uncased` or the offline `tiny-mlm`).
* `SynonymAttack`: WordNet synonyms (`augment.wordnet.synonyms`).

Algorithm, for every caption of the batch at once:

1. Split the caption into whitespace tokens; a token's punctuation stays attached to it
   (`"dog,"` -> prefix `""`, word `"dog"`, suffix `","`). Stop words, non-alphabetic words and
   words past `max_length` (MLM tokens, or words for WordNet) are never replaced.
2. Substitutes: the source's top-k words for each position; sub-word pieces (`##ing`), special
   tokens, stop words, the word itself and multi-word phrases are dropped.
3. Importance: each replaceable word is masked (`[UNK]`, as in the papers' code) and the masked
   caption encoded; importance = 1 - cos(masked, clean) embedding, i.e. how far masking the word
   moves the caption embedding.
4. Greedy rounds, as BERT-Attack: in each round every caption still under its word budget tries
   its next most important position (`words_per_round` of them): every substitute there is
   scored, the best one is kept if it beats the current caption. All candidates of all captions
   of a round are encoded in one chunked `encode_text` pass (`text_batch` texts per forward).

Score to maximise (`guide`):

* `"image"` (default): the attack objective against fixed image embeddings: with `"pair"`, the
  negated similarity of the caption to its image (the SGA text attack); with `"contrastive"`,
  the batch's InfoNCE loss with only this caption replaced (exact, see `substitution_objective`).
* `"text"`: 1 - cos(candidate, clean caption): moves the embedding the most (the original
  BERT-Attack criterion used by Co-Attack); needs no image.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from augment.wordnet import STOP_WORDS
from train.attacks.base import Attack, AttackResult, ClipVictim, default_pairing, positives_matrix

MASK_WORD = "[UNK]"  # what a word becomes when its importance is measured (the papers' choice)
GUIDES = ("image", "text")
DEFAULT_TEXT_BATCH = 256

# leading punctuation, the word (letters, digits, inner ' and -), trailing punctuation
_TOKEN_PARTS = re.compile(r"^([^\w]*)(.*?)([^\w]*)$", re.DOTALL)
_REPLACEABLE = re.compile(r"^[A-Za-z]+(?:['-][A-Za-z]+)*$")


# ----------------------------------------------------------------------------- words


@dataclass(frozen=True)
class Token:
    """A whitespace token split into punctuation and the word proper."""

    prefix: str
    word: str
    suffix: str

    @classmethod
    def parse(cls, token: str) -> "Token":
        prefix, word, suffix = _TOKEN_PARTS.match(token).groups()
        if word[-2:].lower() == "'s" and len(word) > 2:  # a possessive stays with the token: man's -> woman's
            word, suffix = word[:-2], word[-2:] + suffix
        return cls(prefix, word, suffix)

    @property
    def replaceable(self) -> bool:
        return bool(_REPLACEABLE.match(self.word)) and self.word.lower() not in STOP_WORDS

    def replaced_by(self, substitute: str) -> str:
        """The token with its word replaced, the punctuation kept and the case matched."""
        if self.word.isupper() and len(self.word) > 1:
            substitute = substitute.upper()
        elif self.word[:1].isupper():
            substitute = substitute[:1].upper() + substitute[1:]
        return f"{self.prefix}{substitute}{self.suffix}"

    def masked(self) -> str:
        return f"{self.prefix}{MASK_WORD}{self.suffix}"


def acceptable_substitute(substitute: str, original: str) -> bool:
    """A single alphabetic non-stop word different from the original."""
    return (
        bool(_REPLACEABLE.match(substitute))
        and substitute.lower() != original.lower()
        and substitute.lower() not in STOP_WORDS
    )


# ----------------------------------------------------------------------------- substitute sources


class SubstituteSource(ABC):
    """Candidate words for every replaceable position of every caption."""

    name = ""

    @abstractmethod
    def substitutes(self, captions: list[list[Token]]) -> list[dict[int, list[str]]]:
        """Per caption: {token position: substitute words, best first}; positions without any left out."""

    def params(self) -> dict:
        return {"source": self.name}


class MaskedLMSubstitutes(SubstituteSource):
    """The masked LM's top-k predictions at each word's (first) sub-word token.

    As in BERT-Attack, the MLM reads the unmasked caption. A word the MLM splits into several
    pieces gets the predictions of its first piece; pieces, special tokens and stop words among
    the top k are dropped (so a position may get fewer than k substitutes).
    """

    name = "mlm"

    def __init__(self, model, tokenizer, top_k: int = 10, max_length: int = 30, batch_size: int = 32, model_id: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.top_k, self.batch_size = top_k, batch_size
        limit = min(getattr(model.config, "max_position_embeddings", max_length), tokenizer.model_max_length or max_length)
        self.max_length = min(max_length, limit)  # the MLM cannot read past its position table
        self.model_id = model_id
        self._special_ids = set(tokenizer.all_special_ids)

    def params(self) -> dict:
        return {**super().params(), "mlm": self.model_id, "top_k": self.top_k, "max_length": self.max_length}

    def _pieces(self, caption: list[Token]) -> tuple[list[str], dict[int, int]]:
        """Words for the MLM tokenizer (punctuation as its own word) and token position -> piece index."""
        pieces: list[str] = []
        word_piece: dict[int, int] = {}
        for position, token in enumerate(caption):
            if token.prefix:
                pieces.append(token.prefix)
            if token.word:
                if token.replaceable:
                    word_piece[position] = len(pieces)
                pieces.append(token.word)
            if token.suffix:
                pieces.append(token.suffix)
        return pieces, word_piece

    def _decode(self, token_id: int) -> str | None:
        if token_id in self._special_ids:
            return None
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece.startswith("##"):
            return None
        return self.tokenizer.convert_tokens_to_string([piece]).strip()

    @torch.no_grad()
    def substitutes(self, captions: list[list[Token]]) -> list[dict[int, list[str]]]:
        device = next(self.model.parameters()).device
        found: list[dict[int, list[str]]] = []
        for start in range(0, len(captions), self.batch_size):
            chunk = captions[start:start + self.batch_size]
            split = [self._pieces(caption) for caption in chunk]
            encoded = self.tokenizer(
                [pieces or [""] for pieces, _ in split], is_split_into_words=True, truncation=True,
                max_length=self.max_length, padding=True, return_tensors="pt",
            ).to(device)
            logits = self.model(**encoded).logits  # [chunk, seq, vocab]
            for row, (caption, (_, word_piece)) in enumerate(zip(chunk, split)):
                first_token: dict[int, int] = {}
                for token_index, piece_index in enumerate(encoded.word_ids(row)):
                    if piece_index is not None and piece_index not in first_token:
                        first_token[piece_index] = token_index
                # words truncated away by max_length have no token, hence no substitutes
                positions = [p for p, piece in word_piece.items() if piece in first_token]
                per_position: dict[int, list[str]] = {}
                if positions:
                    token_rows = torch.tensor([first_token[word_piece[p]] for p in positions], device=device)
                    top_ids = logits[row, token_rows].topk(self.top_k, dim=-1).indices.tolist()
                    for position, ids in zip(positions, top_ids):
                        words = [self._decode(i) for i in ids]
                        kept = [w for w in dict.fromkeys(words) if w and acceptable_substitute(w, caption[position].word)]
                        if kept:
                            per_position[position] = kept
                found.append(per_position)
        return found


class WordNetSubstitutes(SubstituteSource):
    """The first top-k single-word WordNet synonyms of each word (WordNet's sense order)."""

    name = "wordnet"

    def __init__(self, top_k: int = 10, max_length: int = 30, pos: str | None = None):
        from augment.wordnet import require_wordnet

        require_wordnet()  # fail now, with the set-up hint, not in the middle of an evaluation
        self.top_k, self.max_length, self.pos = top_k, max_length, pos

    def params(self) -> dict:
        return {**super().params(), "top_k": self.top_k, "max_length_words": self.max_length, "pos": self.pos}

    def substitutes(self, captions: list[list[Token]]) -> list[dict[int, list[str]]]:
        from augment.wordnet import synonyms

        found = []
        for caption in captions:
            per_position = {}
            for position, token in enumerate(caption[: self.max_length]):
                if not token.replaceable:
                    continue
                kept = [w for w in synonyms(token.word, self.pos) if acceptable_substitute(w, token.word)][: self.top_k]
                if kept:
                    per_position[position] = kept
            found.append(per_position)
        return found


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def encode_texts(victim: ClipVictim, texts: Sequence[str], batch_size: int = DEFAULT_TEXT_BATCH) -> torch.Tensor:
    """Unit caption embeddings [len(texts), D], `batch_size` captions per forward pass, no gradients."""
    if not texts:
        return torch.empty(0, 0, device=victim.device)
    chunks = [victim.encode_text(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def encode_images(victim: ClipVictim, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Unit image embeddings of [0, 1] pixels, `batch_size` images per forward pass, no gradients."""
    return torch.cat([victim.encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def _leave_one_out_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """[B, T]: logsumexp of each row without column t, exact and stable (prefix/suffix sums)."""
    pad = torch.full_like(logits[:, :1], float("-inf"))
    prefix = torch.cat([pad, logits.logcumsumexp(dim=1)[:, :-1]], dim=1)
    suffix = torch.cat([logits.flip(1).logcumsumexp(dim=1).flip(1)[:, 1:], pad], dim=1)
    return torch.logaddexp(prefix, suffix)


def substitution_objective(candidate_emb: torch.Tensor, caption_of_candidate: torch.Tensor, image_emb: torch.Tensor,
                           text_emb: torch.Tensor, image_of_text: torch.Tensor, objective: str,
                           logit_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """[C] attack objective after replacing caption `caption_of_candidate[c]` by candidate c alone.

    "pair": only the replaced caption's term changes, so the score is its negated similarity to
    its image. "contrastive": `base.contrastive_objective` of the whole batch with that one
    column replaced, computed for all candidates at once.
    """
    image_of_text = image_of_text.to(candidate_emb.device)
    own_image = image_of_text[caption_of_candidate]
    if objective == "pair":
        return -(candidate_emb * image_emb[own_image]).sum(-1)
    if objective != "contrastive":
        raise ValueError(f"unknown objective {objective!r}")
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    positives = positives_matrix(image_of_text, num_images).to(candidate_emb.device).float()  # [B, T]
    captions_per_image = positives.sum(1)
    has_caption = captions_per_image > 0
    logits = logit_scale * image_emb @ text_emb.T  # [B, T]
    candidate_logits = logit_scale * candidate_emb @ image_emb.T  # [C, B]
    # caption -> image terms: the replaced caption's term changes, the others stay
    text_terms = logits.logsumexp(dim=0) - logits[image_of_text, torch.arange(num_texts, device=logits.device)]
    candidate_text_term = candidate_logits.logsumexp(dim=1) - candidate_logits.gather(1, own_image[:, None]).squeeze(1)
    text_loss = (text_terms.sum() - text_terms[caption_of_candidate] + candidate_text_term) / num_texts
    # image -> caption terms: every image's normaliser changes, its own image's positives too
    others = _leave_one_out_logsumexp(logits)[:, caption_of_candidate].T  # [C, B]
    normaliser = torch.logaddexp(others, candidate_logits)
    positive_sum = (positives * logits).sum(1)  # [B]
    replaced_logit = logits[:, caption_of_candidate].T  # [C, B]
    own = F.one_hot(own_image, num_images).float()  # [C, B]
    positive_mean = (positive_sum + own * (candidate_logits - replaced_logit)) / captions_per_image.clamp(min=1)
    image_terms = normaliser - positive_mean  # [C, B]
    image_loss = image_terms[:, has_caption].mean(dim=1)
    return 0.5 * (image_loss + text_loss)


# ----------------------------------------------------------------------------- the attack


@dataclass
class _CaptionState:
    """One caption during the greedy search."""

    tokens: list[Token]
    order: list[int]  # replaceable positions with substitutes, most important first
    current: list[str]  # the caption's whitespace tokens as they stand
    changes: list[dict]
    tried: int = 0

    def next_positions(self, count: int, budget: int) -> list[int]:
        if len(self.changes) >= budget:
            return []
        positions = self.order[self.tried:self.tried + count]
        self.tried += len(positions)
        return positions

    def with_token(self, position: int, new_token: str) -> list[str]:
        return self.current[:position] + [new_token] + self.current[position + 1:]


class WordSubstitutionAttack(Attack):
    """Replace at most `budget` words per caption to maximise the guide score (see module doc)."""

    modality = "text"
    name = "word-substitution"

    def __init__(self, victim: ClipVictim, substitutes: SubstituteSource, budget: int = 1, guide: str = "image",
                 words_per_round: int = 1, text_batch: int = DEFAULT_TEXT_BATCH, objective: str = "pair"):
        super().__init__(victim, objective)
        if guide not in GUIDES:
            raise ValueError(f"unknown guide {guide!r}; expected one of {GUIDES}")
        if budget < 0 or words_per_round < 1 or text_batch < 1:
            raise ValueError("budget must be >= 0, words_per_round and text_batch >= 1")
        self.source = substitutes
        self.budget, self.guide = budget, guide
        self.words_per_round, self.text_batch = words_per_round, text_batch

    def params(self) -> dict:
        return {**super().params(), **self.source.params(), "budget": self.budget, "guide": self.guide,
                "words_per_round": self.words_per_round}

    def _scores(self, candidate_emb, caption_of_candidate, image_emb, clean_emb, current_emb, image_of_text):
        if self.guide == "text":
            return 1 - (candidate_emb * clean_emb[caption_of_candidate]).sum(-1)
        return substitution_objective(candidate_emb, caption_of_candidate, image_emb, current_emb, image_of_text,
                                      self.objective, self.victim.logit_scale)

    @torch.no_grad()
    def _importance_order(self, states: list[_CaptionState], clean_emb: torch.Tensor) -> None:
        """Sort each caption's positions by how far masking the word moves its embedding."""
        masked_texts, owners = [], []
        for index, state in enumerate(states):
            for position in state.order:
                masked_texts.append(" ".join(state.with_token(position, state.tokens[position].masked())))
                owners.append(index)
        if not masked_texts:
            return
        shift = 1 - (encode_texts(self.victim, masked_texts, self.text_batch) * clean_emb[owners]).sum(-1)
        cursor = 0
        for state in states:
            count = len(state.order)
            importance = shift[cursor:cursor + count].tolist()
            cursor += count
            # most important first; ties keep the caption's word order
            state.order = [p for _, p in sorted(zip(importance, state.order), key=lambda pair: -pair[0])]

    def _greedy_round(self, states: list[_CaptionState], substitutes: list[dict[int, list[str]]], image_emb,
                      clean_emb: torch.Tensor, current_emb: torch.Tensor, image_of_text: torch.Tensor) -> bool:
        """One BERT-Attack step for every caption still under budget; False when none had one left.

        Every candidate of every caption is encoded in one chunked pass; each caption keeps its
        best candidate if that beats the caption as it stands (`current_emb` is updated in place).
        """
        texts, owners, changes = [], [], []
        for index, state in enumerate(states):
            for position in state.next_positions(self.words_per_round, self.budget):
                token = state.tokens[position]
                for word in substitutes[index][position]:
                    new_token = token.replaced_by(word)
                    texts.append(" ".join(state.with_token(position, new_token)))
                    owners.append(index)
                    changes.append((position, new_token))
        if not texts:
            return False
        candidate_emb = encode_texts(self.victim, texts, self.text_batch)
        owner_ids = torch.tensor(owners, device=candidate_emb.device)
        scores = self._scores(candidate_emb, owner_ids, image_emb, clean_emb, current_emb, image_of_text)
        every_caption = torch.arange(len(states), device=candidate_emb.device)
        current = self._scores(current_emb, every_caption, image_emb, clean_emb, current_emb, image_of_text).tolist()
        best = torch.full((len(states),), float("-inf"), device=scores.device).scatter_reduce(0, owner_ids, scores, "amax").tolist()
        chosen: dict[int, int] = {}
        for candidate, (owner, score) in enumerate(zip(owners, scores.tolist())):
            # the first candidate reaching its caption's best score, if it beats the caption as it stands
            if owner not in chosen and score == best[owner] > current[owner]:
                chosen[owner] = candidate
        for owner, candidate in chosen.items():
            state = states[owner]
            position, new_token = changes[candidate]
            state.changes.append({"position": position, "from": state.current[position], "to": new_token})
            state.current[position] = new_token
            current_emb[owner] = candidate_emb[candidate]
        return True

    @torch.no_grad()
    def perturb(self, texts: Sequence[str], image_emb: torch.Tensor | None, image_of_text: torch.Tensor) -> tuple[list[str], list[list[dict]]]:
        """(adversarial captions, per caption the words changed) against fixed image embeddings.

        `image_emb` [B, D] may be any guide, e.g. the mean embedding of a set of image views (SGA);
        it may be None with `guide="text"`.
        """
        texts = list(texts)
        if self.guide == "image" and image_emb is None:
            raise ValueError("guide='image' needs image embeddings")
        image_of_text = torch.as_tensor(image_of_text, dtype=torch.long)
        if self.budget == 0 or not texts:
            return texts, [[] for _ in texts]
        token_lists = [[Token.parse(t) for t in text.split()] for text in texts]
        substitutes = self.source.substitutes(token_lists)
        states = [
            _CaptionState(tokens=tokens, order=sorted(subs), current=text.split(), changes=[])
            for text, tokens, subs in zip(texts, token_lists, substitutes)
        ]
        clean_emb = encode_texts(self.victim, texts, self.text_batch)
        current_emb = clean_emb.clone()
        if image_emb is not None:
            image_emb = image_emb.to(clean_emb.device, clean_emb.dtype)
        self._importance_order(states, clean_emb)
        while self._greedy_round(states, substitutes, image_emb, clean_emb, current_emb, image_of_text):
            pass
        adversarial = [" ".join(s.current) if s.changes else text for s, text in zip(states, texts)]
        return adversarial, [s.changes for s in states]

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        image_emb = encode_images(self.victim, images) if self.guide == "image" else None
        adversarial, changes = self.perturb(texts, image_emb, pairing)
        return AttackResult(images=images, texts=adversarial, info={"words_changed": changes})


class BertAttack(WordSubstitutionAttack):
    """BERT-Attack: substitutes from a masked LM's top-k predictions.

    `mlm`: a name `augment.registry.load_mlm` accepts (default: the registry's default masked LM,
    bert-base-uncased; `tiny-mlm` offline) or an already loaded `(model, tokenizer[, name])`, so
    several attacks can share one MLM. `max_length`: MLM tokens read per caption (30 in the
    papers' protocol); words past it are not replaced.
    """

    name = "bert-attack"

    def __init__(self, victim: ClipVictim, mlm: str | tuple = "default", top_k: int = 10, budget: int = 1,
                 max_length: int = 30, guide: str = "image", words_per_round: int = 1,
                 text_batch: int = DEFAULT_TEXT_BATCH, mlm_batch: int = 32, objective: str = "pair"):
        if isinstance(mlm, str):
            from augment.registry import DEFAULT_MODELS, load_mlm

            model_id = DEFAULT_MODELS["mlm"] if mlm == "default" else mlm
            model, tokenizer = load_mlm(model_id, device=victim.device)
        else:
            model, tokenizer, *name = mlm
            model_id = name[0] if name else getattr(model.config, "name_or_path", None)
        source = MaskedLMSubstitutes(model, tokenizer, top_k=top_k, max_length=max_length, batch_size=mlm_batch,
                                     model_id=model_id)
        super().__init__(victim, source, budget=budget, guide=guide, words_per_round=words_per_round,
                         text_batch=text_batch, objective=objective)


class SynonymAttack(WordSubstitutionAttack):
    """Substitutes from WordNet synonyms (needs `augment setup-wordnet` once).

    `max_length` counts words here: words past it are not replaced.
    """

    name = "synonym"

    def __init__(self, victim: ClipVictim, top_k: int = 10, budget: int = 1, max_length: int = 30, guide: str = "image",
                 words_per_round: int = 1, text_batch: int = DEFAULT_TEXT_BATCH, pos: str | None = None,
                 objective: str = "pair"):
        super().__init__(victim, WordNetSubstitutes(top_k=top_k, max_length=max_length, pos=pos), budget=budget,
                         guide=guide, words_per_round=words_per_round, text_batch=text_batch, objective=objective)
