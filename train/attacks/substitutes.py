"""Substitute words for the word-substitution attacks (`train.attacks.text`): where candidates come from.

* `MaskedLMSubstitutes`: a masked language model's top-k predictions at each word (BERT-Attack,
  Li et al. 2020, as used by Co-Attack and SGA): any transformers masked LM
  (`augment.registry.load_mlm` names, e.g. `bert-base-uncased` or the offline `tiny-mlm`). A word
  the MLM splits into several pieces gets, as in BERT-Attack, the combinations of its pieces' top-4
  predictions (the first 24, over at most 12 pieces) ranked by the MLM's perplexity of the
  combination (`pieces="combine"`, `combine_pieces`), or the first piece's predictions
  (`pieces="first"`).
* `ReferenceMLMSubstitutes`: the same predictions read the way the reference codes read them
  (`--protocol sga|co-attack`, see README "Protocols").
* `WordNetSubstitutes`: WordNet synonyms (`augment.wordnet.synonyms`).

Every source drops pieces (`##ing`), special tokens, stop words and the word itself, and says how
a caption splits into words and how a word is masked or replaced (`SubstituteSource`).
"""
from __future__ import annotations

import itertools
import re
from abc import ABC
from typing import AbstractSet

import torch
import torch.nn.functional as F

from augment.wordnet import STOP_WORDS
from augment.words import Chunk, is_word, same_script, split_chunk, word_scripts

_PLACEHOLDER = re.compile(r"\[unused\d+\]")  # a BERT vocabulary's reserved, never-trained entries
MASK_WORD = "[UNK]"  # what a word becomes when its importance is measured (the papers' choice)
# captions per masked-LM call: each call has ~2 ms of fixed cost (tokenizer, small ops) at tiny sizes;
# its hidden states are this x <= max_length x width floats, its logits those of the words read only
# (`masked_lm_top_k`; every token's would be up to 470 MB for bert-base at 128)
DEFAULT_MLM_BATCH = 128
# BERT-Attack's limits on a multi-piece word: pieces read, predictions per piece, combinations kept
MAX_PIECES, PIECE_TOP_K, MAX_COMBINATIONS = 12, 4, 24
REFERENCE_LOGIT_THRESHOLD = 0.3  # the reference codes' raw-logit floor for single-piece substitutes


# ----------------------------------------------------------------------------- words


def acceptable_substitute(substitute: str, original: str, stop_words: AbstractSet[str] = STOP_WORDS) -> bool:
    """A single alphabetic non-stop word different from the original, in the original's script."""
    return (is_word(substitute) and substitute.lower() != original.lower() and substitute.lower() not in stop_words
            and same_script(substitute, original))


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
        # a word written as a special token ([SEP], [CLS], <|endoftext|>) is one to a BERT-tokenized victim
        # (ALBEF, BLIP): replacing its core edited the victim's separator, not a word of the caption
        special = chunk.prefix.endswith(("[", "<|", "<")) and chunk.suffix.startswith(("]", "|>", ">"))
        return not special and chunk.replaceable(self.stop_words)

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


class NoSubstitutes(SubstituteSource):
    """The source of a text attack with a word budget of 0 (the text part of sep, co-attack, sga or prompt-pgd
    switched off by `--word-budget 0`): no word is changed, so no masked LM is loaded, nor WordNet required (they
    were, for nothing: a download, or an offline failure, for an attack that reads none)."""

    name = "none"

    def substitutes(self, captions: list[list[Chunk]]) -> list[dict[int, list[str]]]:
        return [{} for _ in captions]


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


# the prediction heads that map each hidden state to its logits alone, by attribute: BERT's (`cls`)
# and RoBERTa's (`lm_head`) families; other masked LMs get their whole forward
ROW_WISE_HEADS = ("cls", "lm_head")


def masked_lm_top_k(model, inputs, rows: list[int], tokens: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ids) [P, k] on the CPU: the masked LM's top-k predictions at token tokens[p] of input
    row rows[p]. Where the head maps each hidden state alone (`ROW_WISE_HEADS`) it runs on those
    states only: a caption's replaceable words are a fraction of its tokens, and bert-base's logits of
    every token of 128 captions are ~470 MB. Written here because transformers' masked LMs compute the
    head at every position."""
    head = next((getattr(model, name) for name in ROW_WISE_HEADS if isinstance(getattr(model, name, None), torch.nn.Module)),
                None)
    device = next(model.parameters()).device
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
    tokens_t = torch.as_tensor(tokens, dtype=torch.long, device=device)
    if head is None or model.base_model is model:
        logits = model(**inputs).logits[rows_t, tokens_t]
    else:
        logits = head(model.base_model(**inputs)[0][rows_t, tokens_t])
    scores, ids = logits.topk(k, dim=-1)
    return scores.cpu(), ids.cpu()


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
        # special tokens, and BERT's never-trained placeholders ([unused0]..[unused993]: plain vocabulary entries
        # to the tokenizer, no word to a caption), which the reference reading took as substitutes (audit BF)
        self._special_ids = set(tokenizer.all_special_ids) | {
            token_id for token, token_id in tokenizer.get_vocab().items() if _PLACEHOLDER.fullmatch(token)}
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

    def _candidate(self, token_id: int) -> tuple[str, str, frozenset[str]] | None:
        """(word, lower case, scripts) of a single-piece prediction that `acceptable_substitute` may accept
        (a non-special, whole, alphabetic, non-stop word; its scripts for `same_script`); None otherwise."""
        if token_id not in self._candidates:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            word = None if token_id in self._special_ids or piece.startswith("##") else \
                self.tokenizer.convert_tokens_to_string([piece]).strip()
            scripts = word_scripts(word) if word else None
            acceptable = scripts is not None and word.lower() not in self.stop_words
            self._candidates[token_id] = (word, word.lower(), scripts) if acceptable else None
        return self._candidates[token_id]

    def _keep_ids(self, token_ids: list[int], original: str) -> list[str]:
        """`_keep` of the predictions `token_ids` (best first): what it keeps of their decoded words."""
        scripts = word_scripts(original)  # a substitute in the word's script (`same_script`)
        original, known = original.lower(), self._candidates
        kept: list[str] = []
        for token_id in token_ids:  # a plain loop: this runs once per word of every caption attacked
            candidate = known[token_id] if token_id in known else self._candidate(token_id)
            if candidate is not None and candidate[1] != original and candidate[0] not in kept \
                    and (candidate[2] is scripts or (scripts is not None and candidate[2] <= scripts)):
                kept.append(candidate[0])
        return kept

    def _keep(self, words: list[str | None], original: str) -> list[str]:
        return [w for w in dict.fromkeys(words) if w and acceptable_substitute(w, original, self.stop_words)]

    def _top_k_at(self, inputs, wanted: list[tuple[int, int, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`masked_lm_top_k` at the tokens of `wanted` (row, position, tokens), in that order: [P, k] each."""
        return masked_lm_top_k(self.model, inputs, [row for row, _, tokens in wanted for _ in tokens],
                               [token for _, _, tokens in wanted for token in tokens], self.top_k)

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
            wanted: list[tuple[int, int, list[int]]] = []  # (row, position, the word's tokens read)
            for row, (_, word_of) in enumerate(split):
                tokens_of: dict[int, list[int]] = {}
                for token_index, word_index in enumerate(encoded.word_ids(row)):
                    if word_index is not None:
                        tokens_of.setdefault(word_index, []).append(token_index)
                # words truncated away by max_length have no token, hence no substitutes
                for position, word_index in word_of.items():
                    tokens = tokens_of.get(word_index)
                    if tokens:
                        wanted.append((row, position, tokens if len(tokens) > 1 and self.pieces == "combine"
                                       else tokens[:1]))
            if not wanted:
                continue
            _, top_ids = self._top_k_at(encoded, wanted)
            top_lists = top_ids.tolist()  # read as lists: a tensor index per word cost more than the MLM's attention
            at = 0
            for row, position, tokens in wanted:
                if len(tokens) > 1:
                    combine.append((start + row, position, top_ids[at:at + len(tokens)]))
                else:
                    kept = self._keep_ids(top_lists[at], chunk[row][position].core)
                    if kept:
                        found[start + row][position] = kept
                at += len(tokens)
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
            wanted: list[tuple[int, int, list[int]]] = []  # (row, position, the word's tokens read)
            for row, caption in enumerate(chunk):
                for position, (first, end) in enumerate(self._word_spans([c.core for c in caption])):
                    # the reference's rule: a word whose first piece was truncated away (pieces 0 ..
                    # max_length - 2 are read) is skipped
                    if not self.replaceable(caption[position]) or first > self.max_length - 2:
                        continue
                    tokens = list(range(first + offset, min(end + offset, self.max_length)))
                    if tokens:
                        wanted.append((row, position, tokens))
            if not wanted:
                continue
            inputs = {"input_ids": encoded.input_ids.to(self.device), "attention_mask": encoded.attention_mask.to(self.device)}
            top_scores, top_ids = self._top_k_at(inputs, wanted)
            at = 0
            for row, position, tokens in wanted:
                ids, scores = top_ids[at:at + len(tokens)], top_scores[at:at + len(tokens)]
                at += len(tokens)
                if len(tokens) > 1:
                    combine.append((start + row, position, ids))
                    continue
                kept = self._keep(self._single(ids[0].tolist(), scores[0].tolist()), chunk[row][position].core)
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


def load_masked_lm(mlm, device, victim=None) -> tuple:
    """(model, tokenizer, name) from a registry name or a loaded tuple. "default" is the attacked
    model's default (`train.config.default_mlm_of`: tiny-mlm for a tiny twin), the same rule every
    task and `train eval` follow; with no `victim`, the registry's default."""
    if isinstance(mlm, str):
        from augment.registry import load_mlm
        from train.config import default_mlm_of

        model_id = default_mlm_of(victim) if mlm == "default" else mlm
        model, tokenizer = load_mlm(model_id, device=device)
        return model, tokenizer, model_id
    model, tokenizer, *name = mlm
    return model, tokenizer, (name[0] if name else getattr(model.config, "name_or_path", None))
