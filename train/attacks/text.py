"""Word-substitution text attacks (BERT-Attack style), batched over captions and candidates.

One attack, with its substitute words from a `train.attacks.substitutes` source: a masked
language model's top-k predictions (`BertAttack`: `MaskedLMSubstitutes`, or
`ReferenceMLMSubstitutes` under `--protocol sga|co-attack`) or WordNet synonyms
(`SynonymAttack`: `WordNetSubstitutes`).

Algorithm, for every caption of the batch at once:

1. Split the caption into whitespace chunks (`augment.words.split_chunk`): punctuation stays
   attached (`"dog,"` -> word `"dog"` + `","`). Stop words, non-alphabetic words and words past
   `max_length` (MLM tokens, or words for WordNet) are never replaced.
2. Substitutes: the source's top-k words for each position (pieces, special tokens, stop words
   and the word itself dropped; multi-piece words combined as BERT-Attack does: see
   `train.attacks.substitutes`).
3. Importance: each replaceable word is masked (`[UNK]`, as in the papers' code) and the masked
   caption encoded; importance = how far that moves the caption embedding: 1 - cos
   (`importance="cosine"`) or the reference codes' KL divergence between softmaxed embeddings
   (`importance="kl"`).
4. Greedy rounds, as BERT-Attack: in each round every caption still under its word budget tries
   its next most important position (`words_per_round` of them): every substitute there is
   scored, the best one is kept if it beats the current caption. All candidates of all captions
   of a round are encoded in one chunked pass (`text_batch` texts per forward); where scores are
   each candidate's own, a small round also holds the captions' next positions (`round_fill`):
   the same result in fewer passes.

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

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from augment.words import Chunk
from train.attacks.base import EMBEDDINGS, Attack, AttackResult, default_pairing, kl_to, positives_matrix
from train.attacks.substitutes import (DEFAULT_MLM_BATCH, MaskedLMSubstitutes, NoSubstitutes, ReferenceMLMSubstitutes,
                                       SubstituteSource, WordNetSubstitutes, load_masked_lm)

GUIDES = ("image", "text", "text-kl")
IMPORTANCES = ("cosine", "kl")
DEFAULT_TEXT_BATCH = 256


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
    replaced, computed for all candidates at once, in float32 with autocast off: under `--precision amp`
    (fp16) or `amp_bf16` (MAT's inner attack runs in the step's autocast) its products ran in half
    precision, whose rounding moved a candidate's loss about as far as one substitution does (32-128
    synthetic captions x 10 candidates: another best candidate than float32's for 5-15% of the captions
    under fp16, 28-50% under bf16, and ties at the best score, which `greedy_search` takes as no
    substitution, for up to half of them).
    """
    image_of_text = image_of_text.to(candidate_emb.device)
    own_image = image_of_text[caption_of_candidate]
    if loss == "pair":
        return -(candidate_emb * image_emb[own_image]).sum(-1)
    if loss != "contrastive":
        raise ValueError(f"unknown attack loss {loss!r}")
    with torch.autocast(candidate_emb.device.type, enabled=False):  # fp32 products: see the docstring
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


_ONE_STEP_ROUNDS = [False]


@contextmanager
def one_step_rounds():
    """Within the block `round_fill` is 1: the search takes one step a round, as before it looked
    ahead (the baseline `bench attacks` measures against)."""
    previous, _ONE_STEP_ROUNDS[0] = _ONE_STEP_ROUNDS[0], True
    try:
        yield
    finally:
        _ONE_STEP_ROUNDS[0] = previous


def round_fill(device: torch.device | str, text_batch: int = DEFAULT_TEXT_BATCH) -> int:
    """How many candidates a greedy round may hold by looking ahead (`greedy_search`'s `fill`): a
    text-tower pass's fixed cost (`models.length_groups.pass_overhead`: 128 token positions on a
    CPU, 4,096 on a GPU, where a pass is its host calls) in candidates of about 8 new positions
    each, and at most one pass of `text_batch` texts."""
    from models.length_groups import pass_overhead

    if _ONE_STEP_ROUNDS[0]:
        return 1
    return max(1, min(text_batch, pass_overhead(device) // 8))


def greedy_search(texts: Sequence[str], plan: SearchPlan, score: Score, budget: int = 1, words_per_round: int = 1,
                  initial: list[float] | None = None, rescore: Callable[[], list[float]] | None = None,
                  on_accept: Callable[[int, int], None] | None = None, fill: int = 1
                  ) -> tuple[list[str], list[list[dict]]]:
    """BERT-Attack's greedy word substitution with any score to maximise: (new texts, per text the changes).

    Steps: every text still under its `budget` tries its next `words_per_round` positions (plan
    order); each text keeps its best candidate of the step (the first reaching the best score)
    when it beats the text as it stands. The scores of the texts as they stand are `initial`
    (default: `score` of the texts), then the accepted candidates' scores; a score that depends
    on the other texts (the batch's contrastive loss) passes `rescore` (all current scores,
    called after each round's `score`) and `on_accept` (owner, candidate index), told of each
    accepted candidate.

    All candidates of a round go to ONE `score` call. A round is one step; without `rescore` (each
    candidate's score its own alone), a round also looks ahead: it adds the texts' next steps
    while it holds at most `fill` candidates (`round_fill`), and each text takes its steps in
    order, the first accepted candidate ending its round (the later steps' candidates were made
    from the text before that change: dropped). The result is the same as one step a round;
    fewer rounds mean fewer encoder passes, where each pass has a fixed cost (a GPU's host calls).
    """
    texts = list(texts)
    if budget <= 0 or not texts:
        return texts, [[] for _ in texts]
    if initial is None and rescore is None:
        initial = score(texts, list(range(len(texts)))).tolist()
    look_ahead = rescore is None and fill > 1  # a coupled score sees the other texts' changes only between rounds
    base = list(initial) if initial is not None else []
    current = [list(words) for words in plan.words]
    changes: list[list[dict]] = [[] for _ in texts]
    tried = [0] * len(texts)
    while True:
        candidates, owners, picks = [], [], []
        steps: dict[int, list[tuple[int, int, int]]] = {}  # text -> its steps (first candidate, end, positions tried after)
        ahead = list(tried)
        searching = [index for index in range(len(texts)) if len(changes[index]) < budget]
        while searching:
            step = []  # (text, its positions, their candidates' count) of the texts' next step
            for index in searching:
                positions = plan.order[index][ahead[index]:ahead[index] + words_per_round]
                step.append((index, positions, sum(len(plan.substitutes[index][p]) for p in positions)))
            if steps and (not look_ahead or len(candidates) + sum(count for _, _, count in step) > fill):
                break  # a look-ahead step only where the round stays within `fill` candidates
            for index, positions, _ in step:
                first = len(candidates)
                ahead[index] += len(positions)
                words = current[index]
                for position in positions:
                    chunk, prefix, suffix = plan.chunks[index][position], words[:position], words[position + 1:]
                    for word in plan.substitutes[index][position]:
                        new_token = plan.source.replacement(chunk, word)
                        candidates.append(" ".join(prefix + [new_token] + suffix))
                        owners.append(index)
                        picks.append((position, new_token))
                steps.setdefault(index, []).append((first, len(candidates), ahead[index]))
            searching = [index for index in searching if ahead[index] < len(plan.order[index])]
        if not candidates:
            break
        scores = score(candidates, owners).tolist()
        if rescore is not None:
            base = rescore()
        for owner, taken in steps.items():
            tried[owner] = taken[-1][2]
            for first, end, after in taken:
                best = None
                for c in range(first, end):
                    # the first candidate reaching the step's best score, if it beats the text as it stands
                    if scores[c] > base[owner] and (best is None or scores[c] > scores[best]):
                        best = c
                if best is None:
                    continue
                position, new_token = picks[best]
                changes[owner].append({"position": position, "from": current[owner][position], "to": new_token})
                current[owner][position] = new_token
                base[owner] = scores[best]
                tried[owner] = after  # the steps after this one saw the text before the change
                if on_accept is not None:
                    on_accept(owner, best)
                break
    return [" ".join(words) if changes[i] else texts[i] for i, words in enumerate(current)], changes


def substitute_words(texts: Sequence[str], source: SubstituteSource, score: Score, budget: int = 1,
                     words_per_round: int = 1, importance: Score | None = None, fill: int = 1
                     ) -> tuple[list[str], list[list[dict]]]:
    """The whole search with one score, each candidate's its own: positions ordered by the score of
    the masked text (`importance`, default `score` itself), then `greedy_search` (`fill`: its look-ahead)."""
    texts = list(texts)
    if budget <= 0 or not texts:
        return texts, [[] for _ in texts]
    initial = score(texts, list(range(len(texts))))
    plan = plan_search(texts, source, importance or score)
    return greedy_search(texts, plan, score, budget, words_per_round, initial=initial.tolist(), fill=fill)


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

        if self.guide == "image" and self.loss == "contrastive":  # a candidate's score reads the other captions
            return greedy_search(texts, plan, score, self.budget, self.words_per_round, rescore=rescore,
                                 on_accept=accept)
        return greedy_search(texts, plan, score, self.budget, self.words_per_round, initial=rescore(),
                             on_accept=accept, fill=round_fill(clean_emb.device, self.text_batch))

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        image_emb = encode_images(self.victim, images) if self.needs_image else None
        adversarial, changes = self.perturb(texts, image_emb, pairing)
        return AttackResult(images=images, texts=adversarial, info={"words_changed": changes})


class BertAttack(WordSubstitutionAttack):
    """BERT-Attack: substitutes from a masked LM's top-k predictions.

    `mlm`: a name `augment.registry.load_mlm` accepts ("default": the victim's default masked LM,
    bert-base-uncased, or `tiny-mlm` for a tiny twin) or an already loaded `(model, tokenizer[, name])`, so
    several attacks can share one MLM. `max_length`: MLM tokens read per caption (30 in the
    papers' protocol); words past it are not replaced. `reading="reference"` reads the MLM as the
    reference codes do (`ReferenceMLMSubstitutes`, with `reference_bugs`). `masked_unit` (default:
    `reference_bugs`): the SGA code's mixed-importance bug, with `embedding="raw"` only.
    """

    name = "bert-attack"

    def __init__(self, victim, mlm: str | tuple = "default", top_k: int = 10, budget: int = 1,
                 max_length: int = 30, guide: str = "image", words_per_round: int = 1,
                 text_batch: int = DEFAULT_TEXT_BATCH, mlm_batch: int = DEFAULT_MLM_BATCH, loss: str = "pair",
                 pieces: str = "combine", importance: str = "cosine", reading: str = "project",
                 reference_bugs: bool = False, embedding: str = "unit", masked_unit: bool | None = None):
        if reading not in ("project", "reference"):
            raise ValueError(f"unknown MLM reading {reading!r}; expected project or reference")
        if budget == 0:  # no word changes: no masked LM is read, so none is loaded
            source = NoSubstitutes()
        else:
            model, tokenizer, model_id = load_masked_lm(mlm, victim.device, victim)
            common = dict(top_k=top_k, max_length=max_length, batch_size=mlm_batch, model_id=model_id)
            source = (ReferenceMLMSubstitutes(model, tokenizer, reference_bugs=reference_bugs, **common)
                      if reading == "reference" else MaskedLMSubstitutes(model, tokenizer, pieces=pieces, **common))
        super().__init__(victim, source, budget=budget, guide=guide, words_per_round=words_per_round,
                         text_batch=text_batch, loss=loss, importance=importance, embedding=embedding,
                         masked_unit=reference_bugs if masked_unit is None else masked_unit)


class SynonymAttack(WordSubstitutionAttack):
    """Substitutes from WordNet synonyms (needs `augment setup-wordnet` once).

    `max_length` counts words here: words past it are not replaced.
    """

    name = "synonym"

    def __init__(self, victim, top_k: int = 10, budget: int = 1, max_length: int = 30, guide: str = "image",
                 words_per_round: int = 1, text_batch: int = DEFAULT_TEXT_BATCH, pos: str | None = None,
                 loss: str = "pair", importance: str = "cosine", embedding: str = "unit"):
        # no word changes at a budget of 0: WordNet is not read, so not required (as BertAttack's masked LM)
        source = NoSubstitutes() if budget == 0 else WordNetSubstitutes(top_k=top_k, max_length=max_length, pos=pos)
        super().__init__(victim, source, budget=budget, guide=guide, words_per_round=words_per_round,
                         text_batch=text_batch, loss=loss, importance=importance, embedding=embedding)
