"""Robust image-text retrieval: clean numbers and numbers under unimodal and multimodal attacks.

Protocol (the SGA / Co-Attack evaluation code's):

1. The split's images (at most `limit`) and their captions (the first `captions_per_image`, or
   all) form the gallery: N images, T captions, `image_of_text[t]` = the image of caption t.
2. Clean: every image and caption is encoded by the victim; similarity matrix S [N, T].
3. Each attack crafts adversarial examples batch by batch: a batch = `batch_size` images with ALL
   their captions (so SGA sees each image's caption set), on the attacker model (the victim in
   white-box mode; `attacker` in transfer mode, any family). One attack runs over the whole
   gallery before the next starts, so memory holds one attack's results at a time.
4. The victim then encodes the adversarial side(s) and S is recomputed over the WHOLE gallery:
   * image attacks (pgd): adversarial images x clean captions;
   * text attacks (bert-attack, synonym): clean images x adversarial captions;
   * multimodal attacks (sep, co-attack, sga): adversarial images x adversarial captions.
   TR@K queries with the (adversarial) images, IR@K with the (adversarial) captions; each
   query competes against the whole gallery, which shares the same attack.
   Fusion victims (`has_itm`: BLIP, ALBEF) are ranked as their papers evaluate retrieval: ITC
   similarities rank the gallery, ITM re-ranks each query's top `rerank_k` (0: ITC only).
   Attacks craft on ITC embeddings, as the SGA code attacks ALBEF (Co-Attack's code: its encoders'
   outputs, not reproduced). Re-ranking reads the gallery's pixels one batch at a time (clean ones
   decoded again, adversarial ones read back from the batch store), so memory is bounded by the
   batch, not the gallery.
5. Metrics (`train.metrics`): tr@1/5/10, ir@1/5/10, rsum (percent), and the attack success rate
   asr_tr@K / asr_ir@K = percent of the queries correct at K on clean data that are wrong under
   the attack. "R@1 under attack" is `tr@1`/`ir@1` of an attack's entry; ASR is relative to clean.

In transfer mode the attacker crafts on ITS preprocessed pixels; when its resolution differs
from the victim's, adversarial images are resized (bicubic) to the victim's before encoding
(`--protocol sga`: as the SGA code's transfer scripts hand them over, `eval_common.sga_scripts_hand_over`).

`caption_checker(caption, source_row) -> bool | None` (optional) judges attacked captions: for
every attack that changes text the entry gets `meaning_preserved` (how many changed captions
the checker called true) and `*_meaning_preserved` metrics, where an attacked caption the
checker calls false counts as NOT attacked (its clean caption is used): the robustness against
meaning-preserving attacks only.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from augment.loading import DecodingWorkers
from models.half_precision import active_precision
from train.attacks import Attack
from train.attacks.base import words_changed_of
from train.attacks.settings import canonical_options
from train.data import derive_seed
# shared with captioning's and grounding's evaluations; importable from here as before
from train.eval_common import (HAND_OVERS, Gallery, adversarial_pool_writers, advance_resumed, build_attacks,  # noqa: F401
                               attack_bars, evaluated_in_eval_mode, gallery_decoding, gallery_pixels, model_id,
                               plain_attack_options, reseed_attack, resumable_batches, resume_settings,
                               to_victim_resolution)
from train.eval_report import percent_cell, settings_markdown
from train.eval_store import BatchStore, content_problem, settings_with_placed_images
from train.metrics import KS, attack_success_rates, recall_from_hits, retrieval_hits

CaptionChecker = Callable[[str, dict], "bool | None"]
# ITM re-ranking depth of fusion models: ALBEF/BLIP's Flickr30k protocol (their COCO configs use 256)
DEFAULT_RERANK_K = 128
# the papers' set; "synonym" (WordNet substitutes) is available too
DEFAULT_ATTACKS = ("clean", "pgd", "bert-attack", "sep", "co-attack", "sga")

PROCEDURE = (
    "Retrieval over the whole gallery after attacking it batch by batch (batch = images + all their captions). "
    "Image attacks: adversarial images vs clean captions; text attacks: clean images vs adversarial captions; "
    "multimodal attacks: adversarial images vs adversarial captions. tr@K: image queries (correct if any own "
    "caption is in the top K); ir@K: caption queries; rsum: sum of the six recalls; asr_*@K: percent of the "
    "queries correct at K on clean data that the attack makes wrong. All in percent; ties count as misses."
)


@dataclass
class AttackRecord:
    """What one attack produced over the gallery (victim embeddings of the attacked side)."""

    attack: Attack
    image_emb: list[torch.Tensor] = field(default_factory=list)
    text_emb: list[torch.Tensor] = field(default_factory=list)
    # victim-resolution pixels of ONE batch (ITM re-ranking only): saved with the batch, never
    # gathered over the gallery (`extend` leaves them out; re-ranking reads them back per batch)
    images: list[torch.Tensor] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    words_changed: list[int] = field(default_factory=list)
    checker_verdicts: list[bool | None] = field(default_factory=list)  # per caption, None = unchanged/unknown
    linf: float = 0.0
    seconds: float = 0.0

    def extend(self, other: "AttackRecord") -> None:
        """Append another batch's record (in gallery order), its pixels left out (see `images`)."""
        self.image_emb += other.image_emb
        self.text_emb += other.text_emb
        self.texts += other.texts
        self.words_changed += other.words_changed
        self.checker_verdicts += other.checker_verdicts
        self.linf = max(self.linf, other.linf)
        self.seconds += other.seconds

    def state(self) -> dict:
        """Plain tensors, lists and numbers: what `torch.load(weights_only=True)` reads back (the
        pixels are saved apart, `BatchStore.save`)."""
        return {"image_emb": self.image_emb, "text_emb": self.text_emb, "texts": self.texts,
                "words_changed": self.words_changed, "checker_verdicts": self.checker_verdicts,
                "linf": self.linf, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict) -> "AttackRecord":
        """A finished batch's record as `state()` saved it (no attack: `extend` reads the rest)."""
        record = cls(attack=None)  # type: ignore[arg-type]
        for key, value in state.items():
            setattr(record, key, value)
        return record

    def add_batch(self, result, attacker_pixels: torch.Tensor, victim, text_batch: int,
                  caption_checker: CaptionChecker | None, caption_rows: list[dict], keep_pixels: bool,
                  hand_over: Callable[[torch.Tensor, Any], torch.Tensor] = HAND_OVERS["project"]) -> None:
        """Encode the attacked side(s) of one batch with the victim (adversarial images handed over to it
        by `hand_over`, `eval_common.HAND_OVERS`); keep budgets and verdicts."""
        modality = self.attack.modality
        if modality in ("image", "multimodal"):
            self.linf = max(self.linf, float((result.images - attacker_pixels).abs().max()))
            victim_pixels = hand_over(result.images.to(victim.device), victim)
            self.image_emb.append(_encode_images(victim, victim_pixels))
            if keep_pixels:
                self.images.append(victim_pixels.detach().cpu())
        if modality in ("text", "multimodal"):
            changes = result.info["words_changed"]  # words_changed_of: one list per caption
            self.text_emb.append(_encode_texts(victim, result.texts, text_batch))
            self.texts += list(result.texts)
            self.words_changed += [len(c) for c in changes]
            if caption_checker is not None:
                # only changed captions are judged: an unchanged one is as true as the source's
                self.checker_verdicts += [caption_checker(text, row) if change else None
                                          for text, row, change in zip(result.texts, caption_rows, changes)]


@torch.no_grad()
def _encode_images(victim, images: torch.Tensor) -> torch.Tensor:
    return victim.encode_image(images).float().cpu()


@torch.no_grad()
def _encode_texts(victim, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    return torch.cat([victim.encode_text(texts[i:i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)])


def _adversarial_pool_rows(name: str, attack: Attack, rows: list[dict], gallery: Gallery, text_ids: torch.Tensor,
                           start: int, adversarial_images: torch.Tensor, adversarial_texts: list[str],
                           changes: list, attacker: dict, seed: int) -> list[dict]:
    """Pool rows (schema `augment.schema.POOL_FEATURES`) for one batch of adversarial examples."""
    from PIL import Image

    from augment.pool import make_row_id

    method = f"adversarial-{name}"
    images = []
    if attack.modality in ("image", "multimodal"):
        # PNG (lossless) keeps the perturbation up to 8-bit rounding (<= 0.5/255 per pixel)
        array = (adversarial_images.detach().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        images = [Image.fromarray(a, mode="RGB") for a in array]

    def row(image_local: int, caption_index: int, modality: str, image=None, caption=None, extra=None) -> dict:
        source = rows[image_local]
        provenance = {"attack": name, "attack_params": attack.params(), "attacker": attacker, **(extra or {})}
        return {
            "row_id": make_row_id(method, source["image_id"], caption_index, 0),
            "source_image_id": source["image_id"], "source_caption_index": caption_index,
            "split": source["split"], "modality": modality, "image": image, "caption": caption,
            "method": "adversarial", "seed": seed, "provenance": json.dumps(provenance, sort_keys=True, default=str),
        }

    if attack.modality == "image":
        return [row(i, -1, "image", image=images[i]) for i in range(len(rows))]
    out = []
    for local, text_id in enumerate(text_ids.tolist()):
        image_local = int(gallery.image_of_text[text_id]) - start
        extra = {"words_changed": changes[local] if changes else []}
        if attack.modality == "text":
            out.append(row(image_local, gallery.caption_index[text_id], "text", caption=adversarial_texts[local], extra=extra))
        else:
            out.append(row(image_local, gallery.caption_index[text_id], "pair", image=images[image_local],
                           caption=adversarial_texts[local], extra=extra))
    return out


class Ranker:
    """Score matrices of the gallery for one victim: ITC similarities, re-ranked by ITM for fusion
    models (`rerank_k` > 0)."""

    def __init__(self, victim, rerank_k: int, image_of_text: torch.Tensor, batch_size: int):
        self.victim = victim
        self.rerank_k = rerank_k if getattr(victim, "has_itm", False) else 0
        self.image_of_text = image_of_text
        self.batch_size = batch_size

    def hits(self, image_emb: torch.Tensor, text_emb: torch.Tensor, pixel_batches: "PixelBatches | None",
             texts: Sequence[str] | None) -> dict[str, torch.Tensor]:
        """Hits of the gallery's queries; re-ranking reads the images from `pixel_batches()`."""
        # in fp32 whatever `--precision`: under a CPU's autocast `@` ran in bf16/fp16 (the embeddings' own device), its
        # similarities rounded to 2^-9 near 0.3, so near neighbours tied and ties count as misses
        with torch.autocast(image_emb.device.type, enabled=False):
            sims = image_emb.float() @ text_emb.float().T
        if not self.rerank_k:
            return retrieval_hits(sims, self.image_of_text)
        from tasks.retrieval import rerank_scores

        i2t, t2i = rerank_scores(self.victim, sims, pixel_batches(), texts, self.rerank_k, self.batch_size)
        return {**{k: v for k, v in retrieval_hits(i2t, self.image_of_text).items() if k.startswith("tr@")},
                **{k: v for k, v in retrieval_hits(t2i, self.image_of_text).items() if k.startswith("ir@")}}


# a fresh iterable of the gallery's victim-resolution pixels, batch after batch, in gallery order
PixelBatches = Callable[[], Iterable[torch.Tensor]]


@dataclass
class CleanGallery:
    """The victim's clean view of the gallery: embeddings, captions, and for re-ranking its pixels
    (decoded again at each call of `pixel_batches`, not kept)."""

    image_emb: torch.Tensor
    text_emb: torch.Tensor
    pixel_batches: PixelBatches | None
    texts: list[str]
    hits: dict[str, torch.Tensor] = field(default_factory=dict)


def _summarise(record: AttackRecord, clean: CleanGallery, ranker: Ranker, with_checker: bool,
               adversarial_pixels: PixelBatches | None = None) -> dict:
    """The attack's report entry; `adversarial_pixels`: its images' batches (re-ranking of an
    attack that changes images)."""
    attack = record.attack
    image_emb = torch.cat(record.image_emb) if record.image_emb else clean.image_emb
    text_emb = torch.cat(record.text_emb) if record.text_emb else clean.text_emb
    pixels = adversarial_pixels if record.image_emb else clean.pixel_batches
    texts = record.texts or clean.texts
    hits = ranker.hits(image_emb, text_emb, pixels, texts)
    entry: dict[str, Any] = {"modality": attack.modality, **recall_from_hits(hits), **attack_success_rates(clean.hits, hits)}
    entry["params"] = attack.params()
    entry["seconds"] = round(record.seconds, 3)
    if attack.modality in ("image", "multimodal"):
        entry["linf_max"] = record.linf
    if attack.modality in ("text", "multimodal"):
        changed = torch.tensor(record.words_changed, dtype=torch.float)
        # counted exactly (a float32 mean wrote 0.9919999837875366 for 124 of 125)
        entry["words_changed_mean"] = sum(record.words_changed) / len(record.words_changed) if record.words_changed else 0.0
        entry["words_changed_max"] = int(changed.max()) if len(changed) else 0
        entry["captions_changed_pct"] = 100.0 * int((changed > 0).sum()) / len(changed) if len(changed) else 0.0
        if with_checker:
            verdicts = [v for v, n in zip(record.checker_verdicts, record.words_changed) if n > 0]
            judged = [v for v in verdicts if v is not None]
            entry["meaning_preserved"] = {
                "changed_captions": len(verdicts),
                "judged": len(judged),
                "true": sum(judged),
                "true_pct": 100.0 * sum(judged) / len(judged) if judged else None,
            }
            # an attacked caption the checker calls false is not a valid attack: use the clean one
            invalid = torch.tensor([v is False for v in record.checker_verdicts], dtype=torch.bool)
            preserved_text_emb = torch.where(invalid[:, None], clean.text_emb, text_emb)
            preserved_texts = [c if bad else t for t, c, bad in zip(texts, clean.texts, invalid.tolist())]
            preserved_hits = ranker.hits(image_emb, preserved_text_emb, pixels, preserved_texts)
            preserved = {**recall_from_hits(preserved_hits), **attack_success_rates(clean.hits, preserved_hits)}
            entry.update({f"{key}_meaning_preserved": value for key, value in preserved.items()})
    return entry


@evaluated_in_eval_mode("victim", "attacker")
def evaluate(
    victim,
    source_dataset,
    split: str | None = "test",
    attacks: Sequence[str | Attack] = DEFAULT_ATTACKS,
    attacker=None,
    batch_size: int = 32,
    captions_per_image: int | None = None,
    limit: int | None = None,
    save_adv: str | Path | None = None,
    attack_options: dict | None = None,
    caption_checker: CaptionChecker | None = None,
    text_batch: int = 256,
    seed: int = 0,
    progress: bool = True,
    rerank_k: int = DEFAULT_RERANK_K,
    progress_dir: str | Path | None = None,
    caption_preprocess: str | None = None,
    workers: int = 0,
    source_meta: dict | None = None,
) -> dict:
    """Retrieval metrics of `victim` on `split` of `source_dataset`, clean and under `attacks`.

    `victim`, `attacker`: `models.base.VisionLanguageModel`s (any family; `models.load_model`).
    `attacks`: names from `train.attacks.ATTACK_NAMES` (built on the attacker with
    `attack_options`, see `build_attack`; the seed defaults to `seed`) or ready-made `Attack`
    objects (built on the attacker). `attacker`: None for white-box, another model for transfer.
    `rerank_k`: ITM re-ranking depth for fusion victims (0: ITC only). `save_adv`: folder; each
    attack's adversarial examples are written there as a pool (`save_adv/<attack>/`); `source_meta`:
    how the source was read (`source`, `image_root`, ...), recorded in each of those pools.
    `progress_dir`: a folder where every finished batch of every attack is kept
    (`BatchStore`); a killed evaluation called again with the same settings and folder skips
    what is there and gives the same report as an uninterrupted one. `caption_preprocess`:
    "none", "pre_caption" or "blip_pre_caption" (`augment.words.CAPTION_PREPROCESSING`; None: the
    protocol's choice, `attack_options["protocol"]`). `workers`:
    DataLoader processes decoding the next batches' images (0: in this process). Returns the
    dict `train eval` writes as eval.json:
    {"procedure", "victim", "attacker", "settings", "attacks": {name: {metrics, asr, params, ...}}}.
    """
    attacker = attacker or victim
    options = canonical_options({"seed": seed, "text_batch": text_batch, **(attack_options or {})})
    built = build_attacks(list(attacks), attacker, options)
    built.pop("clean", None)  # clean numbers are always computed
    gallery, caption_preprocess = _evaluated_gallery(source_dataset, split, limit, captions_per_image,
                                                     caption_preprocess, options)
    decoding = gallery_decoding(gallery, {"victim": victim.preprocess_eval, "attacker": attacker.preprocess_eval},
                                workers)
    with captions_read_as_given(caption_preprocess, victim, attacker), decoding:
        run = _RetrievalRun(victim, attacker, gallery, Ranker(victim, rerank_k, gallery.image_of_text, batch_size),
                            batch_size, text_batch, seed, caption_checker, decoding,
                            _transfer_hand_over(options) if attacker is not victim else None)
        settings = run.resume_settings(split, limit, captions_per_image, options, built, caption_preprocess,
                                       resumable=progress_dir is not None, source_meta=source_meta)
        run.open_stores(progress_dir, save_adv, settings, built, source_dataset, split, limit, source_meta)
        clean = run.clean_pass()
        results: dict[str, Any] = {"clean": {"modality": "none", **recall_from_hits(clean.hits),
                                             **attack_success_rates(clean.hits, clean.hits), "params": {}}}

        for name, attack, bar in attack_bars(built, len(gallery), "evaluating", progress):
            results[name] = run.attack_gallery(name, attack, clean, bar)
        if run.scratch is not None:
            run.scratch.cleanup()
        return run.report(results, ["clean"] + list(built), settings, options)


@contextlib.contextmanager
def captions_read_as_given(caption_preprocess: str, *models):
    """Within: `models` tokenise captions as given when the gallery's are already cleaned
    ("pre_caption", or BLIP's "blip_pre_caption"), so an attack's texts are cleaned once, as in the
    reference codes, whose datasets clean captions and whose models tokenise what they are given
    (`models.base.ImageTextModel.captions_as_given`; an ALBEF model does not run its own
    `pre_caption` over captions BLIP's cleaned)."""
    with contextlib.ExitStack() as stack:
        if caption_preprocess not in (None, "none"):
            for model in {id(model): model for model in models}.values():
                stack.enter_context(model.captions_as_given())
        yield


def _transfer_hand_over(options: dict) -> str:
    """How the protocol hands a transfer attack's adversarial images to the victim (`HAND_OVERS`)."""
    from train.attacks import PROTOCOL_CHOICES

    return PROTOCOL_CHOICES[options.get("protocol") or "project"].transfer_hand_over


def _evaluated_gallery(source_dataset, split: str | None, limit: int | None, captions_per_image: int | None,
                       caption_preprocess: str | None, options: dict) -> tuple[Gallery, str]:
    """The gallery and its caption preprocessing (None asked: the attack protocol's); ValueError when
    the evaluated images have no captions."""
    protocol_default = None
    if caption_preprocess is None:
        from train.attacks import PROTOCOL_CHOICES

        protocol_default = options.get("protocol") or "project"
        caption_preprocess = PROTOCOL_CHOICES[protocol_default].caption_preprocess
    gallery = Gallery.from_source(source_dataset, split, limit, captions_per_image, caption_preprocess,
                                  protocol_default)
    if not gallery.captions:
        raise ValueError("the evaluated images have no captions")
    return gallery, caption_preprocess


@dataclass
class _RetrievalRun:
    """What every batch and the report of one retrieval evaluation read: the models, the gallery and
    its ranker, and where finished batches, re-ranking's pixels and adversarial pools go."""

    victim: Any
    attacker: Any  # the victim itself in white-box mode
    gallery: Gallery
    ranker: Ranker
    batch_size: int
    text_batch: int
    seed: int
    caption_checker: CaptionChecker | None
    decoding: DecodingWorkers  # the gallery's images, by the "victim"'s or the "attacker"'s preprocessing
    hand_over: str | None  # transfer mode: how adversarial images reach the victim (`HAND_OVERS`); None: white-box
    store: BatchStore | None = None  # finished batches kept for resuming (None: not kept)
    pixel_store: BatchStore | None = None  # where re-ranking reads pixels back: `store`, or `scratch`'s
    scratch: Any = None  # a temporary folder for the pixels when nothing is kept for resuming
    writers: dict = field(default_factory=dict)  # attack name -> its adversarial pool's writer

    @property
    def keep_pixels(self) -> bool:
        return self.ranker.rerank_k > 0

    @property
    def batch_count(self) -> int:
        return self.gallery.batch_count(self.batch_size)

    def resume_settings(self, split: str | None, limit: int | None, captions_per_image: int | None, options: dict,
                        built: dict[str, Attack], caption_preprocess: str, resumable: bool,
                        source_meta: dict | None = None) -> dict:
        """What a resumed evaluation must have been made with (the batch store's tag)."""
        return resume_settings(
            self.victim, self.attacker, self.gallery, resumable, split, limit, captions_per_image, self.batch_size,
            self.seed, built, source_meta, rerank_k=self.ranker.rerank_k, options=plain_attack_options(options),
            checker=getattr(self.caption_checker, "__name__", None),
            caption_preprocess=caption_preprocess, precision=active_precision(self.victim.device))

    def open_stores(self, progress_dir: str | Path | None, save_adv: str | Path | None, settings: dict,
                    built: dict[str, Attack], source_dataset, split: str | None, limit: int | None,
                    source_meta: dict | None = None) -> None:
        """The batch store (with `progress_dir`), the pool writers (with `save_adv`) and, for re-ranking
        without a batch store, a scratch store for the pixels."""
        self.store = (BatchStore(progress_dir, settings, settings_with_placed_images(settings, self.gallery.rows))
                      if progress_dir is not None else None)
        self.writers = adversarial_pool_writers(save_adv, built, source_dataset, self.attacker, split, limit, self.seed,
                                                self.batch_size, progress_dir, items=len(self.gallery),
                                                source_meta=source_meta)
        self.pixel_store = self.store
        if self.keep_pixels and self.store is None:
            # re-ranking reads each attack's pixels back one batch at a time: they wait on disk, not in memory
            import tempfile

            self.scratch = tempfile.TemporaryDirectory(prefix="mat-plus-eval-")
            self.pixel_store = BatchStore(self.scratch.name, settings)

    def clean_pixels(self) -> Iterable[torch.Tensor]:
        return (pixels for pixels, _ in gallery_pixels(self.gallery, self.batch_size, self.decoding, "victim",
                                                       range(self.batch_count)))

    def clean_pass(self) -> CleanGallery:
        return _clean_pass(self.victim, self.gallery, self.batch_size, self.text_batch, self.decoding, self.ranker,
                           self.store, self.clean_pixels if self.keep_pixels else None)

    def attack_gallery(self, name: str, attack: Attack, clean: CleanGallery, bar) -> dict:
        """Attack `name`'s report entry as written: kept from a resumed evaluation, else every batch
        attacked (or read back where kept) and the whole gallery ranked."""
        finished = self.store.load_summary(name) if self.store is not None else None
        store = self.store
        if finished is not None and name in self.writers and not all(
                self.writers[name].has_shard(b) for b in range(self.batch_count)):
            # its --save-adv pool is new, moved or deleted since: every batch is attacked again (reseeded,
            # the same examples), which writes the pool's shards, and the entry is computed again
            finished, store = None, None
        if finished is not None:  # resumed after this attack's entry was written: nothing to redo
            if name in self.writers:  # opening the kept pool for resuming marked it in progress again
                self.writers[name].finalize(expected_shards=self.batch_count)
            advance_resumed(bar, len(self.gallery))
            return finished
        record = AttackRecord(attack)
        for batch_index, start, text_ids, decoded in resumable_batches(
                self.gallery, self.batch_size, self.decoding, "attacker", store, self.writers, name):
            if decoded is None:
                expected = partial(_batch_problem, attack.modality, min(self.batch_size, len(self.gallery) - start),
                                   len(text_ids), clean.image_emb.shape[1], self.caption_checker is not None)
                record.extend(AttackRecord.from_state(self.store.load_state(name, batch_index, expected)))
                advance_resumed(bar, min(self.batch_size, len(self.gallery) - start))
                continue
            decoded_pixels, rows = decoded
            record.extend(self.attack_batch(name, attack, batch_index, start, text_ids, decoded_pixels, rows))
            bar.update(len(rows))
        entry = _summarise(record, clean, self.ranker, self.caption_checker is not None,
                           _stored_pixels(self.pixel_store, name, self.batch_count, self.batch_size, len(self.gallery))
                           if self.keep_pixels else None)
        if name in self.writers:
            self.writers[name].finalize(expected_shards=batch_index + 1)
            entry["adversarial_pool"] = str(self.writers[name].out_dir)
        written = _as_written(entry)
        if self.pixel_store is not None:
            self.pixel_store.save_summary(name, written)
        return written

    def attack_batch(self, name: str, attack: Attack, batch_index: int, start: int, text_ids: torch.Tensor,
                     decoded_pixels: torch.Tensor, rows: list[dict]) -> AttackRecord:
        """One batch attacked on the attacker and its attacked side(s) encoded by the victim; kept (for
        resuming, re-ranking) and its adversarial examples written to the attack's pool."""
        texts = [self.gallery.captions[i] for i in text_ids.tolist()]
        local_pairing = self.gallery.image_of_text[text_ids] - start
        attacker_pixels = decoded_pixels.to(self.attacker.device)
        reseed_attack(attack, derive_seed(self.seed, name, batch_index))  # a resumed batch draws what it drew before
        began = time.perf_counter()
        result = attack(attacker_pixels, texts, local_pairing)
        seconds = time.perf_counter() - began
        if attack.modality in ("text", "multimodal"):
            result.info["words_changed"] = words_changed_of(result, texts, name)
        caption_rows = [rows[int(image) - start] for image in self.gallery.image_of_text[text_ids]]
        part = AttackRecord(attack, seconds=seconds)
        part.add_batch(result, attacker_pixels, self.victim, self.text_batch, self.caption_checker, caption_rows,
                       self.keep_pixels, HAND_OVERS[self.hand_over or "project"])
        if self.pixel_store is not None:
            self.pixel_store.save(name, batch_index, part)
        if name in self.writers:
            self.writers[name].write_shard(batch_index, _adversarial_pool_rows(
                name, attack, rows, self.gallery, text_ids, start, result.images, result.texts,
                result.info.get("words_changed", []), model_id(self.attacker), self.seed))
        return part

    def report(self, results: dict[str, dict], order: list[str], settings: dict, options: dict) -> dict:
        """The evaluation's report: `results` (each attack's entry) in `order`, with the settings it ran with."""
        return {
            "procedure": PROCEDURE + (f" Fusion victim: ITC ranks, ITM re-ranks the top {self.ranker.rerank_k}."
                                      if self.ranker.rerank_k else ""),
            "victim": model_id(self.victim),
            "attacker": model_id(self.attacker),
            "settings": {
                "mode": "transfer" if self.attacker is not self.victim else "white-box",
                **({"transfer_hand_over": self.hand_over} if self.hand_over else {}),
                "split": settings["split"], "num_images": len(self.gallery), "num_captions": len(self.gallery.captions),
                "captions_per_image": settings["captions_per_image"], "limit": settings["limit"],
                "batch_size": self.batch_size, "text_batch": self.text_batch, "seed": self.seed, "ks": list(KS),
                "rerank_k": self.ranker.rerank_k, "attack_options": plain_attack_options(options),
                "caption_preprocess": settings["caption_preprocess"], "precision": settings["precision"],
                "device": torch.device(self.victim.device).type,  # its numbers depend on the kernels that ran it
                "caption_checker": getattr(self.caption_checker, "__name__", None) if self.caption_checker else None,
            },
            "attacks": {name: results[name] for name in order},
        }


def _clean_pass(victim, gallery: Gallery, batch_size: int, text_batch: int, decoding: DecodingWorkers, ranker: Ranker,
                store: "BatchStore | None", pixel_batches: PixelBatches | None) -> CleanGallery:
    """The victim's clean view of the whole gallery: embeddings and per-query hits (taken from
    `store` when a killed evaluation kept them, else computed and kept there)."""
    kept = store.load_clean(partial(_clean_problem, len(gallery), len(gallery.captions))) if store is not None else None
    if kept is not None:
        return CleanGallery(kept["image_emb"], kept["text_emb"], pixel_batches, list(gallery.captions), kept["hits"])
    image_emb, text_emb = [], []
    decoded = gallery_pixels(gallery, batch_size, decoding, "victim", range(gallery.batch_count(batch_size)))
    for _, _, text_ids in gallery.batches(batch_size, rows=False):
        victim_pixels = next(decoded)[0].to(victim.device)
        image_emb.append(_encode_images(victim, victim_pixels))
        text_emb.append(_encode_texts(victim, [gallery.captions[i] for i in text_ids.tolist()], text_batch))
    clean = CleanGallery(torch.cat(image_emb), torch.cat(text_emb), pixel_batches, list(gallery.captions))
    clean.hits = ranker.hits(clean.image_emb, clean.text_emb, clean.pixel_batches, clean.texts)
    if store is not None:
        store.save_clean(clean)
    return clean


def _stored_pixels(store: "BatchStore", name: str, batch_count: int, batch_size: int, images: int) -> PixelBatches:
    """Attack `name`'s victim-resolution pixels read back from `store`, one batch at a time (each
    checked to hold its batch's images)."""
    return lambda: (store.load_pixels(name, b, min(batch_size, images - b * batch_size)) for b in range(batch_count))


def _clean_problem(images: int, captions: int, kept) -> str | None:
    """What is wrong with a kept clean pass (`BatchStore.save_clean`) of a gallery of `images` images
    and `captions` captions, or None."""
    problem = content_problem(kept, {"hits": (dict, None)}, {"image_emb": {"rows": images, "dims": 2},
                                                             "text_emb": {"rows": captions, "dims": 2}})
    if problem is None and kept["image_emb"].shape[1] != kept["text_emb"].shape[1]:
        problem = f"image_emb and text_emb of {kept['image_emb'].shape[1]} and {kept['text_emb'].shape[1]} columns"
    if problem is None:
        problem = content_problem(kept["hits"], {}, {
            **{f"tr@{k}": {"rows": images, "dims": 1} for k in KS}, **{f"ir@{k}": {"rows": captions, "dims": 1} for k in KS}})
        problem = problem and f"hits: {problem}"
    return problem


def _batch_problem(modality: str, images: int, captions: int, width: int, checked: bool, state) -> str | None:
    """What is wrong with a kept batch (`AttackRecord.state`) of an attack of `modality` over `images`
    images and `captions` captions (embeddings `width` wide; `checked`: with the checker's verdicts),
    or None."""
    attacked = images if modality in ("image", "multimodal") else 0
    changed = captions if modality in ("text", "multimodal") else 0
    return content_problem(
        state, {"texts": (list, changed), "words_changed": (list, changed), "checker_verdicts": (list, changed if checked else 0),
                "linf": ((int, float), None), "seconds": ((int, float), None)},
        {"image_emb": {"rows": attacked, "width": width, "dims": 2}, "text_emb": {"rows": changed, "width": width, "dims": 2}})


def _as_written(entry: dict) -> dict:
    """`entry` as eval.json holds it (and a resumed evaluation reads it back): JSON types only."""
    return json.loads(json.dumps(entry, default=str))


# ----------------------------------------------------------------------------- report


TABLE_COLUMNS = (("TR@1", "tr@1"), ("TR@5", "tr@5"), ("TR@10", "tr@10"), ("IR@1", "ir@1"), ("IR@5", "ir@5"),
                 ("IR@10", "ir@10"), ("RSUM", "rsum"), ("ASR TR@1", "asr_tr@1"), ("ASR IR@1", "asr_ir@1"))


def markdown_report(report: dict) -> str:
    """eval.md: one row per attack, recalls under attack and attack success rates."""
    settings = report["settings"]
    victim = report["victim"]
    attacker = report["attacker"]
    lines = [
        f"# Retrieval robustness: {victim['name']}" + (f" ({victim['pretrained']})" if victim.get("pretrained") else ""),
        "",
        f"Split `{settings['split']}`: {settings['num_images']} images, {settings['num_captions']} captions; "
        f"{settings['mode']} attacks" + ("" if settings["mode"] == "white-box" else f" crafted on {attacker['name']}") + ".",
        "",
        "| attack | " + " | ".join(title for title, _ in TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for name, entry in report["attacks"].items():
        lines.append(f"| {name} | " + " | ".join(percent_cell(entry.get(key)) for _, key in TABLE_COLUMNS) + " |")
    lines += [
        "",
        "TR@K / IR@K / RSUM are recalls (%) UNDER the attack (R@1 under attack); ASR columns are attack success "
        "rates (%): the share of queries correct at R@1 on clean data that the attack makes wrong.",
        "",
        report["procedure"],
    ]
    checked = {n: e for n, e in report["attacks"].items() if "meaning_preserved" in e}
    if checked:
        lines += ["", "| attack | changed captions still true (% of those judged) | TR@1 meaning-preserved | IR@1 meaning-preserved |",
                  "|---|---:|---:|---:|"]
        for name, entry in checked.items():
            lines.append(f"| {name} | {percent_cell(entry['meaning_preserved']['true_pct'])} | "
                         f"{percent_cell(entry.get('tr@1_meaning_preserved'))} | {percent_cell(entry.get('ir@1_meaning_preserved'))} |")
    lines += settings_markdown(report)
    return "\n".join(lines) + "\n"
