"""Word-substitution text attacks (BERT-Attack style), batched over captions and candidates.

One attack, three sources of substitute words:

* `MaskedLMSubstitutes` (`BertAttack`): a masked language model's top-k predictions at each word
  (Li et al. 2020, as used by Co-Attack and SGA): any transformers masked LM
  (`augment.registry.load_mlm` names, e.g. `bert-base-uncased` or the offline `tiny-mlm`).
* `ReferenceMLMSubstitutes`: the same predictions read the way the reference codes read them
  (`--protocol sga|co-attack`, see README "Protocols").
* `WordNetSubstitutes` (`SynonymAttack`): WordNet synonyms (`augment.wordnet.synonyms`).

Algorithm, for every caption of the batch at once:

1. Split the caption into whitespace chunks (`augment.words.split_chunk`): punctuation stays
   attached (`"dog,"` -> word `"dog"` + `","`). Stop words, non-alphabetic words and words past
   `max_length` (MLM tokens, or words for WordNet) are never replaced.
2. Substitutes: the source's top-k words for each position; pieces (`##ing`), special tokens,
   stop words and the word itself are dropped. A word the MLM splits into several pieces gets,
   as in BERT-Attack, the combinations of its pieces' top-4 predictions (the first 24, over at
   most 12 pieces) ranked by the MLM's perplexity of the combination (`pieces="combine"`), or
   the first piece's predictions (`pieces="first"`).
3. Importance: each replaceable word is masked (`[UNK]`, as in the papers' code) and the masked
   caption encoded; importance = how far that moves the caption embedding: 1 - cos
   (`importance="cosine"`) or the reference codes' KL divergence between softmaxed embeddings
   (`importance="kl"`).
4. Greedy rounds, as BERT-Attack: in each round every caption still under its word budget tries
   its next most important position (`words_per_round` of them): every substitute there is
   scored, the best one is kept if it beats the current caption. All candidates of all captions
   of a round are encoded in one chunked pass (`text_batch` texts per forward).

Steps 1-3 are `plan_search` and step 4 `greedy_search`, written once for any score function:
the captioning (`train.attacks.captioning`) and grounding (`train.attacks.grounding`) text
attacks are the same search with their own scores (LM loss, ITM score).

Score to maximise (`guide`):

* `"image"` (default): the attack loss against fixed image embeddings: with `"pair"`, the
  negated similarity of the caption to its image (the SGA text attack); with `"contrastive"`,
  the batch's InfoNCE loss with only this caption replaced (exact, see `substitution_loss`).
* `"text"`: 1 - cos(candidate, clean caption): moves the embedding the most; needs no image.
* `"text-kl"`: KL(softmax(clean caption) || softmax(candidate)): the reference codes' BERT-Attack
  criterion (Co-Attack's code, SGA's `TextAttacker.attack`); needs no image. `embedding="raw"`
  takes it (and the KL importance) over the embeddings before normalisation, as SGA's
  `TextAttacker.attack` reads its CLIP wrapper's `text_embed` (Co-Attack's wrapper normalises).
"""
from __future__ import annotations

import itertools
from abc import ABC
from dataclasses import dataclass, field
from typing import AbstractSet, Callable, Sequence

import torch
import torch.nn.functional as F

from augment.wordnet import STOP_WORDS
from augment.words import Chunk, is_word, split_chunk
from train.attacks.base import Attack, AttackResult, default_pairing, kl_to, positives_matrix

MASK_WORD = "[UNK]"  # what a word becomes when its importance is measured (the papers' choice)
GUIDES = ("image", "text", "text-kl")
IMPORTANCES = ("cosine", "kl")
EMBEDDINGS = ("unit", "raw")  # the caption embeddings the text guide and importance read
DEFAULT_TEXT_BATCH = 256
# captions per masked-LM call: each call has ~2 ms of fixed cost (tokenizer, small ops) at tiny sizes;
# its logits are this x <= max_length x vocab floats (bert-base: <= 470 MB at 128)
DEFAULT_MLM_BATCH = 128
# BERT-Attack's limits on a multi-piece word: pieces read, predictions per piece, combinations kept
MAX_PIECES, PIECE_TOP_K, MAX_COMBINATIONS = 12, 4, 24
REFERENCE_LOGIT_THRESHOLD = 0.3  # the reference codes' raw-logit floor for single-piece substitutes


# ----------------------------------------------------------------------------- words


def acceptable_substitute(substitute: str, original: str, stop_words: AbstractSet[str] = STOP_WORDS) -> bool:
    """A single alphabetic non-stop word different from the original."""
    return is_word(substitute) and substitute.lower() != original.lower() and substitute.lower() not in stop_words


# ----------------------------------------------------------------------------- substitute sources


class SubstituteSource(ABC):
    """Candidate words for every replaceable position of every caption, and how captions are split."""

    name = ""
    stop_words: AbstractSet[str] = STOP_WORDS

    def split(self, text: str) -> list[str]:
        return text.split()

    def chunk(self, word: str) -> Chunk:
        return split_chunk(word, possessive=True)

    def replaceable(self, chunk: Chunk) -> bool:
        return chunk.replaceable(self.stop_words)

    def replacement(self, chunk: Chunk, substitute: str) -> str:
        """The whitespace token that replaces `chunk` (punctuation kept, case matched)."""
        return chunk.replaced_by(substitute)

    def masked(self, chunk: Chunk) -> str:
        return f"{chunk.prefix}{MASK_WORD}{chunk.suffix}"

    def substitutes(self, captions: list[list[Chunk]]) -> list[dict[int, list[str]]]:
        """Per caption: {chunk position: substitute words, best first}; positions without any left out."""
        raise NotImplementedError

    def params(self) -> dict:
        return {"source": self.name}


def reference_join(tokens: list[str]) -> str:
    """Word pieces as text as ALBEF's tokenizer joins them (the SGA and Co-Attack codes' decoding):
    spaces between pieces, "##" joins; no clean-up of the spaces before punctuation."""
    return " ".join(tokens).replace(" ##", "").strip()


def combine_pieces(model, tokenizer, piece_predictions: list[torch.Tensor], drop_ids: set[int] | None = None,
                   join=None) -> list[list[str]]:
    """Substitutes of multi-piece words, as BERT-Attack builds them.

    `piece_predictions[w]`: [pieces, k] top predicted ids at each piece of word w. The first
    `MAX_PIECES` pieces' top `PIECE_TOP_K` ids are combined (every combination, in order), the
    first `MAX_COMBINATIONS` kept, and ranked by the MLM's perplexity of the combination read
    alone (exp of the mean cross entropy of each piece); returned as strings, lowest perplexity
    first. `drop_ids` (special tokens): combinations holding one are left out. `join`: pieces to
    text (default: the tokenizer's `convert_tokens_to_string`). All words with the same number of
    pieces share one MLM forward pass (the reference code runs one per word).
    """
    join = join or (lambda tokens: tokenizer.convert_tokens_to_string(tokens).strip())
    combos_of: list[torch.Tensor] = []
    for predictions in piece_predictions:
        rows = predictions[:MAX_PIECES, :PIECE_TOP_K].tolist()
        combos = list(itertools.islice(itertools.product(*rows), MAX_COMBINATIONS))
        if drop_ids:
            combos = [c for c in combos if not drop_ids.intersection(c)]
        combos_of.append(torch.tensor(combos, dtype=torch.long).view(len(combos), len(rows)))
    out: list[list[str]] = [[] for _ in piece_predictions]
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for index, combos in enumerate(combos_of):
        if len(combos):
            by_length.setdefault(combos.shape[1], []).append(index)
    for length, words in by_length.items():
        ids = torch.cat([combos_of[w] for w in words]).to(device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits  # [N, L, vocab]
        entropy = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1), reduction="none")
        perplexity = entropy.view(-1, length).mean(-1).exp().cpu()
        start = 0
        for w in words:
            count = len(combos_of[w])
            order = torch.sort(perplexity[start:start + count], stable=True).indices.tolist()
            out[w] = [join(tokenizer.convert_ids_to_tokens(combos_of[w][i].tolist())) for i in order]
            start += count
    return out


class MaskedLMSubstitutes(SubstituteSource):
    """The masked LM's top-k predictions at each word (the project's reading).

    As in BERT-Attack, the MLM reads the unmasked caption; punctuation is passed to it as words of
    its own. Pieces, special tokens and stop words among the top k are dropped (so a position may
    get fewer than k substitutes). Multi-piece words: see `combine_pieces` (`pieces="combine"`),
    or the first piece's predictions (`pieces="first"`).
    """

    name = "mlm"

    def __init__(self, model, tokenizer, top_k: int = 10, max_length: int = 30, batch_size: int = DEFAULT_MLM_BATCH,
                 model_id: str | None = None, pieces: str = "combine"):
        if pieces not in ("combine", "first"):
            raise ValueError(f"unknown piece mode {pieces!r}")
        self.model, self.tokenizer = model, tokenizer
        self.top_k, self.batch_size, self.pieces = top_k, batch_size, pieces
        limit = min(getattr(model.config, "max_position_embeddings", max_length), tokenizer.model_max_length or max_length)
        self.max_length = min(max_length, limit)  # the MLM cannot read past its position table
        self.model_id = model_id
        self.join = None  # multi-piece substitutes as the tokenizer decodes them
        self._special_ids = set(tokenizer.all_special_ids)
        # token id -> (word, its lower case) when the word may substitute a word other than itself, else
        # None: the same few ids recur across a batch's k x positions (checked once each, the substitute
        # search on the bench world takes 36 ms instead of 40)
        self._candidates: dict[int, tuple[str, str] | None] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def params(self) -> dict:
        return {**super().params(), "mlm": self.model_id, "top_k": self.top_k, "max_length": self.max_length,
                "pieces": self.pieces}

    def _words_for_mlm(self, caption: list[Chunk]) -> tuple[list[str], dict[int, int]]:
        """Words for the MLM tokenizer (punctuation as its own word) and chunk position -> word index."""
        words: list[str] = []
        word_of: dict[int, int] = {}
        for position, chunk in enumerate(caption):
            if chunk.prefix:
                words.append(chunk.prefix)
            if chunk.core:
                if self.replaceable(chunk):
                    word_of[position] = len(words)
                words.append(chunk.core)
            if chunk.suffix:
                words.append(chunk.suffix)
        return words, word_of

    def _candidate(self, token_id: int) -> tuple[str, str] | None:
        """(word, lower case) of a single-piece prediction that `acceptable_substitute` may accept
        (a non-special, whole, alphabetic, non-stop word); None otherwise."""
        if token_id not in self._candidates:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            word = None if token_id in self._special_ids or piece.startswith("##") else \
                self.tokenizer.convert_tokens_to_string([piece]).strip()
            acceptable = word and is_word(word) and word.lower() not in self.stop_words
            self._candidates[token_id] = (word, word.lower()) if acceptable else None
        return self._candidates[token_id]

    def _keep_ids(self, token_ids: list[int], original: str) -> list[str]:
        """`_keep` of the predictions `token_ids` (best first): what it keeps of their decoded words."""
        original, known = original.lower(), self._candidates
        kept: list[str] = []
        for token_id in token_ids:  # a plain loop: this runs once per word of every caption attacked
            candidate = known[token_id] if token_id in known else self._candidate(token_id)
            if candidate is not None and candidate[1] != original and candidate[0] not in kept:
                kept.append(candidate[0])
        return kept

    def _keep(self, words: list[str | None], original: str) -> list[str]:
        return [w for w in dict.fromkeys(words) if w and acceptable_substitute(w, original, self.stop_words)]

    @torch.no_grad()
    def substitutes(self, captions: list[list[Chunk]]) -> list[dict[int, list[str]]]:
        found: list[dict[int, list[str]]] = [{} for _ in captions]
        combine: list[tuple[int, int, torch.Tensor]] = []  # (caption, position, [pieces, k] ids)
        for start in range(0, len(captions), self.batch_size):
            chunk = captions[start:start + self.batch_size]
            split = [self._words_for_mlm(caption) for caption in chunk]
            encoded = self.tokenizer(
                [words or [""] for words, _ in split], is_split_into_words=True, truncation=True,
                max_length=self.max_length, padding=True, return_tensors="pt",
            ).to(self.device)
            top_ids = self.model(**encoded).logits.topk(self.top_k, dim=-1).indices.cpu()  # [chunk, seq, k]
            top_lists = top_ids.tolist()  # read as lists: a tensor index per word cost more than the MLM's attention
            for row, (caption, (_, word_of)) in enumerate(zip(chunk, split)):
                tokens_of: dict[int, list[int]] = {}
                for token_index, word_index in enumerate(encoded.word_ids(row)):
                    if word_index is not None:
                        tokens_of.setdefault(word_index, []).append(token_index)
                # words truncated away by max_length have no token, hence no substitutes
                for position, word_index in word_of.items():
                    tokens = tokens_of.get(word_index)
                    if not tokens:
                        continue
                    if len(tokens) > 1 and self.pieces == "combine":
                        combine.append((start + row, position, top_ids[row, tokens]))
                        continue
                    kept = self._keep_ids(top_lists[row][tokens[0]], caption[position].core)
                    if kept:
                        found[start + row][position] = kept
        self._add_combined(found, captions, combine, self._special_ids)
        return found

    def _add_combined(self, found: list[dict[int, list[str]]], captions: list[list[Chunk]],
                      combine: list[tuple[int, int, list[int]]], drop) -> None:
        """The substitutes of multi-piece words ((caption, position, piece ids) in `combine`),
        combined by `combine_pieces` (ids in `drop` never proposed), into `found`."""
        if not combine:
            return
        combined = combine_pieces(self.model, self.tokenizer, [ids for _, _, ids in combine], drop, self.join)
        for (index, position, _), words in zip(combine, combined):
            kept = self._keep(words, captions[index][position].core)
            if kept:
                found[index][position] = kept


class ReferenceMLMSubstitutes(MaskedLMSubstitutes):
    """The masked LM's substitutes read as the reference codes (SGA, Co-Attack) read them.

    Captions split on single spaces, punctuation stays inside the word and a substitute replaces
    the whole word as predicted (no case matching); the MLM reads the caption text as ALBEF's
    tokenizer builds it ([CLS] and `max_length` - 1 pieces, no [SEP], padded to `max_length`);
    a word's pieces are found by tokenizing the word alone; a word whose first piece lies past
    the truncation is skipped; substitutes are filtered by the reference's word list
    (`REFERENCE_FILTER_WORDS`), by "##" and by equality with the word, nothing else.
    Single-piece words take the top-k predictions; multi-piece words `combine_pieces`, their
    pieces joined as ALBEF's tokenizer joins them (`reference_join`).

    `reference_bugs=True` brings back the reference's bugs (fixed otherwise): predictions read
    one position early (no [CLS] offset), special tokens accepted, and single-piece substitutes
    cut at the first raw logit below 0.3.
    """

    name = "mlm-reference"

    def __init__(self, model, tokenizer, top_k: int = 10, max_length: int = 30, batch_size: int = DEFAULT_MLM_BATCH,
                 model_id: str | None = None, reference_bugs: bool = False):
        super().__init__(model, tokenizer, top_k=top_k, max_length=max_length, batch_size=batch_size,
                         model_id=model_id, pieces="combine")
        from train.attacks.protocols import REFERENCE_FILTER_WORDS

        self.stop_words = REFERENCE_FILTER_WORDS
        self.reference_bugs = reference_bugs
        self.join = reference_join

    def params(self) -> dict:
        return {**super().params(), "reading": "reference", "reference_bugs": self.reference_bugs}

    def split(self, text: str) -> list[str]:
        return text.split(" ")

    def chunk(self, word: str) -> Chunk:
        return Chunk("", word, "")

    def replaceable(self, chunk: Chunk) -> bool:
        return chunk.core not in self.stop_words

    def replacement(self, chunk: Chunk, substitute: str) -> str:
        return substitute

    def masked(self, chunk: Chunk) -> str:
        return MASK_WORD

    def _word_spans(self, words: list[str]) -> list[tuple[int, int]]:
        """Each word's pieces [start, end) counted from 0 (without [CLS]), as the reference counts them."""
        spans, index = [], 0
        for word in words:
            count = len(self.tokenizer.tokenize(word))
            spans.append((index, index + count))
            index += count
        return spans

    def _single(self, ids: list[int], scores: list[float]) -> list[str]:
        words = []
        for token_id, score in zip(ids, scores):
            if self.reference_bugs and score < REFERENCE_LOGIT_THRESHOLD:
                break
            if not self.reference_bugs and token_id in self._special_ids:
                continue
            words.append(self.tokenizer.convert_ids_to_tokens(token_id))
        return words

    def _keep(self, words: list[str | None], original: str) -> list[str]:
        return [w for w in dict.fromkeys(words) if w and w != original and "##" not in w and w not in self.stop_words]

    @torch.no_grad()
    def substitutes(self, captions: list[list[Chunk]]) -> list[dict[int, list[str]]]:
        from models.albef.text import tokenize_without_sep

        found: list[dict[int, list[str]]] = [{} for _ in captions]
        combine: list[tuple[int, int, torch.Tensor]] = []
        offset = 0 if self.reference_bugs else 1  # [CLS] comes first
        for start in range(0, len(captions), self.batch_size):
            chunk = captions[start:start + self.batch_size]
            texts = [" ".join(c.core for c in caption) for caption in chunk]
            # as ALBEF's tokenizer, which both codes pass: [CLS] + max_length - 1 pieces, no [SEP], padded
            encoded = tokenize_without_sep(self.tokenizer, texts, self.max_length, pad_to_max_length=True)
            logits = self.model(input_ids=encoded.input_ids.to(self.device),
                                attention_mask=encoded.attention_mask.to(self.device)).logits
            top_scores, top_ids = (t.cpu() for t in logits.topk(self.top_k, dim=-1))
            for row, caption in enumerate(chunk):
                words = [c.core for c in caption]
                for position, (first, end) in enumerate(self._word_spans(words)):
                    # the reference's rule: a word whose first piece was truncated away (pieces 0 ..
                    # max_length - 2 are read) is skipped
                    if not self.replaceable(caption[position]) or first > self.max_length - 2:
                        continue
                    rows = slice(first + offset, min(end + offset, self.max_length))
                    ids, scores = top_ids[row, rows], top_scores[row, rows]
                    if len(ids) == 0:
                        continue
                    if len(ids) > 1:
                        combine.append((start + row, position, ids))
                        continue
                    kept = self._keep(self._single(ids[0].tolist(), scores[0].tolist()), words[position])
                    if kept:
                        found[start + row][position] = kept
        self._add_combined(found, captions, combine, None if self.reference_bugs else self._special_ids)
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

    def substitutes(self, captions: list[list[Chunk]]) -> list[dict[int, list[str]]]:
        from augment.wordnet import synonyms

        found = []
        for caption in captions:
            per_position = {}
            for position, chunk in enumerate(caption[: self.max_length]):
                if not self.replaceable(chunk):
                    continue
                kept = [w for w in synonyms(chunk.core, self.pos) if acceptable_substitute(w, chunk.core)][: self.top_k]
                if kept:
                    per_position[position] = kept
            found.append(per_position)
        return found


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def encode_texts(victim, texts: Sequence[str], batch_size: int = DEFAULT_TEXT_BATCH, normalize: bool = True,
                 prefix=None, owners: Sequence[int] | None = None) -> torch.Tensor:
    """Unit caption embeddings [len(texts), D] (`normalize=False`: before normalisation), `batch_size`
    captions per forward pass, no gradients.

    Each distinct text is encoded once, and texts go to the encoder sorted by length, so a
    forward pass holds texts of similar length (less padding where the victim trims it). With a
    `prefix` cache (`victim.text_prefix_cache(references)`) and `owners` (text i begins like
    `references[owners[i]]`), only each text's tokens after the shared beginning are computed.
    """
    texts = list(texts)
    if not texts:
        return torch.empty(0, 0, device=victim.device)
    # a text listed twice may come from two captions: either one's shared beginning gives its embedding
    owner_of = dict(zip(texts, owners)) if prefix is not None and owners is not None else None
    unique = list(dict.fromkeys(texts))
    unique.sort(key=len)
    if owner_of is not None:  # one call: the cache groups the texts by their new positions, then cuts passes
        parts = [prefix.encode(unique, [owner_of[t] for t in unique], normalize, batch_size=batch_size)]
    else:
        kwargs = {} if normalize else {"normalize": False}
        parts = [victim.encode_text(unique[i:i + batch_size], **kwargs) for i in range(0, len(unique), batch_size)]
    embeddings = torch.cat(parts)
    row = {text: index for index, text in enumerate(unique)}
    return embeddings[torch.tensor([row[text] for text in texts], device=embeddings.device)]


@torch.no_grad()
def encode_images(victim, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Unit image embeddings of [0, 1] pixels, `batch_size` images per forward pass, no gradients."""
    return torch.cat([victim.encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def _leave_one_out_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """[B, T]: logsumexp of each row without column t, exact and stable (prefix/suffix sums)."""
    pad = torch.full_like(logits[:, :1], float("-inf"))
    prefix = torch.cat([pad, logits.logcumsumexp(dim=1)[:, :-1]], dim=1)
    suffix = torch.cat([logits.flip(1).logcumsumexp(dim=1).flip(1)[:, 1:], pad], dim=1)
    return torch.logaddexp(prefix, suffix)


def substitution_loss(candidate_emb: torch.Tensor, caption_of_candidate: torch.Tensor, image_emb: torch.Tensor,
                      text_emb: torch.Tensor, image_of_text: torch.Tensor, loss: str,
                      logit_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """[C] attack loss after replacing caption `caption_of_candidate[c]` by candidate c alone.

    "pair": only the replaced caption's term changes, so the score is its negated similarity to
    its image. "contrastive": `base.contrastive_loss` of the whole batch with that one column
    replaced, computed for all candidates at once.
    """
    image_of_text = image_of_text.to(candidate_emb.device)
    own_image = image_of_text[caption_of_candidate]
    if loss == "pair":
        return -(candidate_emb * image_emb[own_image]).sum(-1)
    if loss != "contrastive":
        raise ValueError(f"unknown attack loss {loss!r}")
    candidate_emb, image_emb, text_emb = candidate_emb.float(), image_emb.float(), text_emb.float()
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    positives = positives_matrix(image_of_text, num_images).to(candidate_emb.device).float()  # [B, T]
    captions_per_image = positives.sum(1)
    has_caption = (captions_per_image > 0).float()
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
    image_loss = (image_terms * has_caption).sum(dim=1) / num_images  # images without a caption add nothing
    return 0.5 * (image_loss + text_loss)


# ----------------------------------------------------------------------------- the greedy search

# (candidate texts, owners) -> [C] scores to MAXIMISE; owners[c] = the index of the text candidate c replaces
Score = Callable[[list[str], list[int]], torch.Tensor]


@dataclass
class SearchPlan:
    """What the greedy search needs that depends on the texts and the substitute source alone, so an
    attack that searches the same texts twice (SGA) builds it once."""

    source: SubstituteSource
    words: list[list[str]]  # each text's whitespace tokens
    chunks: list[list[Chunk]]
    substitutes: list[dict[int, list[str]]]  # {position: substitute words, best first}
    order: list[list[int]]  # positions with substitutes, most important first

    def masked(self) -> tuple[list[str], list[int], list[int]]:
        """(texts with one word masked, owner text, masked position) for every position with substitutes."""
        texts, owners, positions = [], [], []
        for index, subs in enumerate(self.substitutes):
            for position in sorted(subs):
                mask = self.source.masked(self.chunks[index][position])
                texts.append(" ".join(self.words[index][:position] + [mask] + self.words[index][position + 1:]))
                owners.append(index)
                positions.append(position)
        return texts, owners, positions


def plan_search(texts: Sequence[str], source: SubstituteSource, importance: Score) -> SearchPlan:
    """Split `texts`, find their substitutes and order each text's positions by `importance`
    (scores of the texts with that word masked as `[UNK]`, higher = tried first; ties keep the
    word order), as BERT-Attack does."""
    words = [source.split(text) for text in texts]
    chunks = [[source.chunk(w) for w in caption] for caption in words]
    plan = SearchPlan(source, words, chunks, source.substitutes(chunks), [[] for _ in words])
    masked, owners, positions = plan.masked()
    values = importance(masked, owners).tolist() if masked else []
    ranked: list[list[tuple[float, int]]] = [[] for _ in words]
    for value, owner, position in zip(values, owners, positions):
        ranked[owner].append((value, position))
    plan.order = [[p for _, p in sorted(pairs, key=lambda pair: -pair[0])] for pairs in ranked]
    return plan


def greedy_search(texts: Sequence[str], plan: SearchPlan, score: Score, budget: int = 1, words_per_round: int = 1,
                  initial: list[float] | None = None, rescore: Callable[[], list[float]] | None = None,
                  on_accept: Callable[[int, int], None] | None = None) -> tuple[list[str], list[list[dict]]]:
    """BERT-Attack's greedy word substitution with any score to maximise: (new texts, per text the changes).

    Rounds: every text still under its `budget` tries its next `words_per_round` positions (plan
    order); all candidates of all texts of a round are scored in ONE `score` call; each text keeps
    its best candidate (the first reaching the best score) when it beats the text as it stands.
    The scores of the texts as they stand are `initial` (default: `score` of the texts), then the
    accepted candidates' scores; a score that depends on the other texts (the batch's contrastive
    loss) passes `rescore` (all current scores, called each round after `score`) and `on_accept`
    (owner, candidate index), told of each accepted candidate.
    """
    texts = list(texts)
    if budget <= 0 or not texts:
        return texts, [[] for _ in texts]
    if initial is None and rescore is None:
        initial = score(texts, list(range(len(texts)))).tolist()
    base = list(initial) if initial is not None else []
    current = [list(words) for words in plan.words]
    changes: list[list[dict]] = [[] for _ in texts]
    tried = [0] * len(texts)
    while True:
        candidates, owners, picks = [], [], []
        for index in range(len(texts)):
            if len(changes[index]) >= budget:
                continue
            positions = plan.order[index][tried[index]:tried[index] + words_per_round]
            tried[index] += len(positions)
            words = current[index]
            for position in positions:
                chunk, prefix, suffix = plan.chunks[index][position], words[:position], words[position + 1:]
                for word in plan.substitutes[index][position]:
                    new_token = plan.source.replacement(chunk, word)
                    candidates.append(" ".join(prefix + [new_token] + suffix))
                    owners.append(index)
                    picks.append((position, new_token))
        if not candidates:
            break
        scores = score(candidates, owners).tolist()
        if rescore is not None:
            base = rescore()
        best: dict[int, int] = {}
        for c, (owner, value) in enumerate(zip(owners, scores)):
            # the first candidate reaching its text's best score, if it beats the text as it stands
            if value > base[owner] and (owner not in best or value > scores[best[owner]]):
                best[owner] = c
        for owner, c in best.items():
            position, new_token = picks[c]
            changes[owner].append({"position": position, "from": current[owner][position], "to": new_token})
            current[owner][position] = new_token
            base[owner] = scores[c]
            if on_accept is not None:
                on_accept(owner, c)
    return [" ".join(words) if changes[i] else texts[i] for i, words in enumerate(current)], changes


def substitute_words(texts: Sequence[str], source: SubstituteSource, score: Score, budget: int = 1,
                     words_per_round: int = 1, importance: Score | None = None) -> tuple[list[str], list[list[dict]]]:
    """The whole search with one score: positions ordered by the score of the masked text
    (`importance`, default `score` itself), then `greedy_search`."""
    texts = list(texts)
    if budget <= 0 or not texts:
        return texts, [[] for _ in texts]
    initial = score(texts, list(range(len(texts))))
    plan = plan_search(texts, source, importance or score)
    return greedy_search(texts, plan, score, budget, words_per_round, initial=initial.tolist())


# ----------------------------------------------------------------------------- the attack


@dataclass
class PreparedTexts:
    """`WordSubstitutionAttack.prepare`'s result: the search plan, the clean caption embeddings,
    and the candidate lists already encoded for these texts (by the exact list, so a second
    search of the same texts, SGA's third step, reuses its first round bit for bit)."""

    plan: SearchPlan
    clean_emb: torch.Tensor
    encoded: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict)
    normalize: bool = True  # whether the embeddings are unit (else before normalisation, `embedding="raw"`)
    prefix: object | None = None  # the victim's text prefix cache of the clean texts, where it has one

    def encode(self, victim, texts: list[str], batch_size: int, owners: list[int]) -> torch.Tensor:
        """Embeddings of candidate `texts`, text i made from clean text `owners[i]`."""
        key = tuple(texts)
        if key not in self.encoded:
            self.encoded[key] = encode_texts(victim, texts, batch_size, self.normalize, self.prefix, owners)
        return self.encoded[key]


class WordSubstitutionAttack(Attack):
    """Replace at most `budget` words per caption to maximise the guide score (see module doc)."""

    modality = "text"
    name = "word-substitution"

    def __init__(self, victim, substitutes: SubstituteSource, budget: int = 1, guide: str = "image",
                 words_per_round: int = 1, text_batch: int = DEFAULT_TEXT_BATCH, loss: str = "pair",
                 importance: str = "cosine", embedding: str = "unit", masked_unit: bool = False):
        super().__init__(victim, loss)
        if guide not in GUIDES:
            raise ValueError(f"unknown guide {guide!r}; expected one of {GUIDES}")
        if importance not in IMPORTANCES:
            raise ValueError(f"unknown importance {importance!r}; expected one of {IMPORTANCES}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; expected one of {EMBEDDINGS}")
        if embedding == "raw" and (guide != "text-kl" or importance != "kl"):
            raise ValueError("embedding='raw' goes with guide='text-kl' and importance='kl' (the cosine scores read unit embeddings)")
        if budget < 0 or words_per_round < 1 or text_batch < 1:
            raise ValueError("budget must be >= 0, words_per_round and text_batch >= 1")
        self.source = substitutes
        self.budget, self.guide, self.importance = budget, guide, importance
        self.words_per_round, self.text_batch = words_per_round, text_batch
        # masked_unit: the SGA code's TextAttacker.attack compares its raw clean embedding with unit masked
        # ones (`text_embed` against `text_feat`): a reference bug, only with embedding="raw"
        self.embedding, self.masked_unit = embedding, masked_unit and embedding == "raw"

    @property
    def needs_image(self) -> bool:
        return self.guide == "image"

    def params(self) -> dict:
        params = {**super().params(), **self.source.params(), "budget": self.budget, "guide": self.guide,
                  "importance": self.importance, "words_per_round": self.words_per_round}
        if self.embedding != "unit":
            params["embedding"] = self.embedding + (" (masked: unit)" if self.masked_unit else "")
        if self.guide != "image":  # the text guides score candidates without the attack loss: not reported as if used
            params.pop("loss")
        return params

    def _scores(self, candidate_emb, caption_of_candidate, image_emb, clean_emb, current_emb, image_of_text):
        if self.guide == "text":
            return 1 - (candidate_emb * clean_emb[caption_of_candidate]).sum(-1)
        if self.guide == "text-kl":
            return kl_to(clean_emb[caption_of_candidate], candidate_emb)
        return substitution_loss(candidate_emb, caption_of_candidate, image_emb, current_emb, image_of_text,
                                 self.loss, self.victim.logit_scale)

    @torch.no_grad()
    def prepare(self, texts: Sequence[str]) -> "PreparedTexts":
        """The search plan (words, substitutes, importance order) and clean embeddings of `texts`:
        they depend on the texts and the victim alone, so an attack that attacks the same captions
        twice with the same victim (SGA) computes them once and passes them to `perturb(..., prepared=)`.

        Importance = how far masking the word moves the caption embedding (1 - cos, or KL).
        """
        texts = list(texts)
        unit = self.embedding == "unit"
        # every text the search encodes is a clean text with one word changed: the tokens before it are shared
        cache_of = getattr(self.victim, "text_prefix_cache", None)  # a duck-typed victim may lack it
        prefix = cache_of(texts, self.text_batch) if cache_of is not None else None
        if prefix is not None:
            clean_emb = prefix.reference_embeddings(unit)
        else:
            clean_emb = encode_texts(self.victim, texts, self.text_batch, unit)

        def importance(masked: list[str], owners: list[int]) -> torch.Tensor:
            masked_emb = encode_texts(self.victim, masked, self.text_batch, unit or self.masked_unit, prefix, owners)
            if self.importance == "kl":
                return kl_to(clean_emb[owners], masked_emb)
            return 1 - (masked_emb * clean_emb[owners]).sum(-1)

        return PreparedTexts(plan_search(texts, self.source, importance), clean_emb, normalize=unit, prefix=prefix)

    @torch.no_grad()
    def perturb(self, texts: Sequence[str], image_emb: torch.Tensor | None, image_of_text: torch.Tensor,
                prepared: "PreparedTexts | None" = None) -> tuple[list[str], list[list[dict]]]:
        """(adversarial captions, per caption the words changed) against fixed image embeddings.

        `image_emb` [B, D] may be any guide, e.g. the mean embedding of a set of image views (SGA);
        it may be None with the text guides.
        """
        texts = list(texts)
        if self.needs_image and image_emb is None:
            raise ValueError("guide='image' needs image embeddings")
        image_of_text = torch.as_tensor(image_of_text, dtype=torch.long)
        if self.budget == 0 or not texts:
            return texts, [[] for _ in texts]
        prepared = prepared if prepared is not None else self.prepare(texts)
        plan, clean_emb = prepared.plan, prepared.clean_emb
        current_emb = clean_emb.clone()  # the captions as they stand (the contrastive score reads all of them)
        if image_emb is not None:
            image_emb = image_emb.to(clean_emb.device, clean_emb.dtype)
        last: dict[str, torch.Tensor] = {}
        every_caption = torch.arange(len(texts), device=clean_emb.device)

        def score(candidates: list[str], owners: list[int]) -> torch.Tensor:
            last["emb"] = prepared.encode(self.victim, candidates, self.text_batch, owners)
            owner_ids = torch.tensor(owners, device=clean_emb.device)
            return self._scores(last["emb"], owner_ids, image_emb, clean_emb, current_emb, image_of_text)

        def rescore() -> list[float]:
            return self._scores(current_emb, every_caption, image_emb, clean_emb, current_emb, image_of_text).tolist()

        def accept(owner: int, candidate: int) -> None:
            current_emb[owner] = last["emb"][candidate]

        return greedy_search(texts, plan, score, self.budget, self.words_per_round, rescore=rescore, on_accept=accept)

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        image_emb = encode_images(self.victim, images) if self.needs_image else None
        adversarial, changes = self.perturb(texts, image_emb, pairing)
        return AttackResult(images=images, texts=adversarial, info={"words_changed": changes})


def load_masked_lm(mlm, device) -> tuple:
    """(model, tokenizer, name) from a registry name ("default" = the registry's default) or a loaded tuple."""
    if isinstance(mlm, str):
        from augment.registry import DEFAULT_MODELS, load_mlm

        model_id = DEFAULT_MODELS["mlm"] if mlm == "default" else mlm
        model, tokenizer = load_mlm(model_id, device=device)
        return model, tokenizer, model_id
    model, tokenizer, *name = mlm
    return model, tokenizer, (name[0] if name else getattr(model.config, "name_or_path", None))


class BertAttack(WordSubstitutionAttack):
    """BERT-Attack: substitutes from a masked LM's top-k predictions.

    `mlm`: a name `augment.registry.load_mlm` accepts (default: the registry's default masked LM,
    bert-base-uncased; `tiny-mlm` offline) or an already loaded `(model, tokenizer[, name])`, so
    several attacks can share one MLM. `max_length`: MLM tokens read per caption (30 in the
    papers' protocol); words past it are not replaced. `reading="reference"` reads the MLM as the
    reference codes do (`ReferenceMLMSubstitutes`, with `reference_bugs`).
    """

    name = "bert-attack"

    def __init__(self, victim, mlm: str | tuple = "default", top_k: int = 10, budget: int = 1,
                 max_length: int = 30, guide: str = "image", words_per_round: int = 1,
                 text_batch: int = DEFAULT_TEXT_BATCH, mlm_batch: int = DEFAULT_MLM_BATCH, loss: str = "pair",
                 pieces: str = "combine", importance: str = "cosine", reading: str = "project",
                 reference_bugs: bool = False, embedding: str = "unit"):
        model, tokenizer, model_id = load_masked_lm(mlm, victim.device)
        common = dict(top_k=top_k, max_length=max_length, batch_size=mlm_batch, model_id=model_id)
        if reading == "reference":
            source = ReferenceMLMSubstitutes(model, tokenizer, reference_bugs=reference_bugs, **common)
        elif reading == "project":
            source = MaskedLMSubstitutes(model, tokenizer, pieces=pieces, **common)
        else:
            raise ValueError(f"unknown MLM reading {reading!r}; expected project or reference")
        super().__init__(victim, source, budget=budget, guide=guide, words_per_round=words_per_round,
                         text_batch=text_batch, loss=loss, importance=importance, embedding=embedding,
                         masked_unit=reference_bugs)


class SynonymAttack(WordSubstitutionAttack):
    """Substitutes from WordNet synonyms (needs `augment setup-wordnet` once).

    `max_length` counts words here: words past it are not replaced.
    """

    name = "synonym"

    def __init__(self, victim, top_k: int = 10, budget: int = 1, max_length: int = 30, guide: str = "image",
                 words_per_round: int = 1, text_batch: int = DEFAULT_TEXT_BATCH, pos: str | None = None,
                 loss: str = "pair", importance: str = "cosine"):
        super().__init__(victim, WordNetSubstitutes(top_k=top_k, max_length=max_length, pos=pos), budget=budget,
                         guide=guide, words_per_round=words_per_round, text_batch=text_batch, loss=loss,
                         importance=importance)
