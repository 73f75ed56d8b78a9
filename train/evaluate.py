"""Robust image-text retrieval: clean numbers and numbers under unimodal and multimodal attacks.

Protocol (the SGA / Co-Attack evaluation code's):

1. The split's images (at most `limit`) and their captions (the first `captions_per_image`, or
   all) form the gallery: N images, T captions, `image_of_text[t]` = the image of caption t.
2. Clean: every image and caption is encoded by the victim; similarity matrix S [N, T].
3. Each attack crafts adversarial examples batch by batch: a batch = `batch_size` images with ALL
   their captions (so SGA sees each image's caption set), on the attacker model (the victim in
   white-box mode; `attacker_bundle` in transfer mode).
4. The victim then encodes the adversarial side(s) and S is recomputed over the WHOLE gallery:
   * image attacks (pgd): adversarial images x clean captions;
   * text attacks (bert-attack, synonym): clean images x adversarial captions;
   * multimodal attacks (sep, co-attack, sga): adversarial images x adversarial captions.
   TR@K queries with the (adversarial) images, IR@K with the (adversarial) captions; each
   query competes against the whole gallery, which shares the same attack.
5. Metrics (`train.metrics`): tr@1/5/10, ir@1/5/10, rsum (percent), and the attack success rate
   asr_tr@K / asr_ir@K = percent of the queries correct at K on clean data that are wrong under
   the attack. "R@1 under attack" is `tr@1`/`ir@1` of an attack's entry; ASR is relative to clean.

In transfer mode the attacker crafts on ITS preprocessed pixels; when its resolution differs
from the victim's, adversarial images are resized (bicubic) to the victim's before encoding.

`caption_checker(caption, source_row) -> bool | None` (optional) judges attacked captions: for
every attack that changes text the entry gets `meaning_preserved` (how many changed captions
the checker called true) and `*_meaning_preserved` metrics, where an attacked caption the
checker calls false counts as NOT attacked (its clean caption is used): the robustness against
meaning-preserving attacks only.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from train.attacks import Attack, ClipVictim, build_attack
from train.metrics import KS, attack_success_rates, recall_from_hits, retrieval_hits

CaptionChecker = Callable[[str, dict], "bool | None"]
# the papers' set; "synonym" (WordNet substitutes) is available too
DEFAULT_ATTACKS = ("clean", "pgd", "bert-attack", "sep", "co-attack", "sga")

PROTOCOL = (
    "Retrieval over the whole gallery after attacking it batch by batch (batch = images + all their captions). "
    "Image attacks: adversarial images vs clean captions; text attacks: clean images vs adversarial captions; "
    "multimodal attacks: adversarial images vs adversarial captions. tr@K: image queries (correct if any own "
    "caption is in the top K); ir@K: caption queries; rsum: sum of the six recalls; asr_*@K: percent of the "
    "queries correct at K on clean data that the attack makes wrong. All in percent; ties count as misses."
)


@dataclass
class Gallery:
    """The evaluated images (source rows) and their captions, flattened."""

    rows: Any  # datasets.Dataset of the selected split
    captions: list[str]
    image_of_text: torch.Tensor  # [T]
    caption_index: list[int]  # each caption's index among its image's captions

    @classmethod
    def from_source(cls, source_dataset, split: str | None = "test", limit: int | None = None,
                    captions_per_image: int | None = None, caption_preprocess: str | None = None) -> "Gallery":
        from augment.sources import select_split
        from augment.words import preprocess_caption

        rows = select_split(source_dataset, split)
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        captions, image_of_text, caption_index = [], [], []
        for image, image_captions in enumerate(rows["captions"]):
            kept = image_captions if captions_per_image is None else image_captions[:captions_per_image]
            captions += [preprocess_caption(c, caption_preprocess) for c in kept]
            image_of_text += [image] * len(kept)
            caption_index += list(range(len(kept)))
        return cls(rows, captions, torch.tensor(image_of_text, dtype=torch.long), caption_index)

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, batch_size: int):
        """(first image, source rows, caption ids) per batch of images with all their captions."""
        for start in range(0, len(self.rows), batch_size):
            stop = min(start + batch_size, len(self.rows))
            text_ids = torch.nonzero((self.image_of_text >= start) & (self.image_of_text < stop)).flatten()
            yield start, [self.rows[i] for i in range(start, stop)], text_ids


@dataclass
class AttackRecord:
    """What one attack produced over the gallery (victim embeddings of the attacked side)."""

    attack: Attack
    image_emb: list[torch.Tensor] = field(default_factory=list)
    text_emb: list[torch.Tensor] = field(default_factory=list)
    words_changed: list[int] = field(default_factory=list)
    checker_verdicts: list[bool | None] = field(default_factory=list)  # per caption, None = unchanged/unknown
    linf: float = 0.0
    seconds: float = 0.0

    def add_batch(self, result, attacker_pixels: torch.Tensor, victim: ClipVictim, victim_size: int, text_batch: int,
                  caption_checker: CaptionChecker | None, caption_rows: list[dict]) -> None:
        """Encode the attacked side(s) of one batch with the victim; keep budgets and verdicts."""
        modality = self.attack.modality
        if modality in ("image", "multimodal"):
            self.linf = max(self.linf, float((result.images - attacker_pixels).abs().max()))
            victim_pixels = _to_victim_resolution(result.images.to(victim.device), victim_size)
            self.image_emb.append(_encode_images(victim, victim_pixels))
        if modality in ("text", "multimodal"):
            changes = result.info.get("words_changed", [])
            self.text_emb.append(_encode_texts(victim, result.texts, text_batch))
            self.words_changed += [len(c) for c in changes]
            if caption_checker is not None:
                # only changed captions are judged: an unchanged one is as true as the source's
                self.checker_verdicts += [caption_checker(text, row) if change else None
                                          for text, row, change in zip(result.texts, caption_rows, changes)]


def model_id(bundle) -> dict:
    return {"name": bundle.name, "pretrained": bundle.pretrained}


def _pixels(bundle, rows: list[dict], device) -> torch.Tensor:
    return torch.stack([bundle.preprocess_eval(row["image"]) for row in rows]).to(device)


def _to_victim_resolution(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


@torch.no_grad()
def _encode_images(victim: ClipVictim, images: torch.Tensor) -> torch.Tensor:
    return victim.encode_image(images).float().cpu()


@torch.no_grad()
def _encode_texts(victim: ClipVictim, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    return torch.cat([victim.encode_text(texts[i:i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)])


def build_attacks(names: Sequence[str | Attack], attacker: ClipVictim, options: dict) -> dict[str, Attack]:
    """Attacks by name (built on the attacker, sharing one masked LM) or ready-made ones."""
    options = dict(options)
    needs_mlm = any(n in ("bert-attack", "sep", "co-attack", "sga") for n in names if isinstance(n, str))
    if needs_mlm and options.get("candidates", "mlm") == "mlm" and isinstance(options.get("mlm", "default"), str):
        from augment.registry import DEFAULT_MODELS, load_mlm

        name = options.get("mlm", "default")
        name = DEFAULT_MODELS["mlm"] if name == "default" else name
        model, tokenizer = load_mlm(name, device=attacker.device)
        options["mlm"] = (model, tokenizer, name)
    attacks: dict[str, Attack] = {}
    for entry in names:
        attack = build_attack(entry, attacker, **options) if isinstance(entry, str) else entry
        key = entry if isinstance(entry, str) else attack.name
        if key in attacks:
            raise ValueError(f"attack {key!r} listed twice")
        attacks[key] = attack
    return attacks


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


def _summarise(record: AttackRecord, clean_image_emb, clean_text_emb, image_of_text, clean_hits, with_checker: bool) -> dict:
    attack = record.attack
    image_emb = torch.cat(record.image_emb) if record.image_emb else clean_image_emb
    text_emb = torch.cat(record.text_emb) if record.text_emb else clean_text_emb
    hits = retrieval_hits(image_emb @ text_emb.T, image_of_text)
    entry: dict[str, Any] = {"modality": attack.modality, **recall_from_hits(hits), **attack_success_rates(clean_hits, hits)}
    entry["params"] = attack.params()
    entry["seconds"] = round(record.seconds, 3)
    if attack.modality in ("image", "multimodal"):
        entry["linf_max"] = record.linf
    if attack.modality in ("text", "multimodal"):
        changed = torch.tensor(record.words_changed, dtype=torch.float)
        entry["words_changed_mean"] = float(changed.mean()) if len(changed) else 0.0
        entry["words_changed_max"] = int(changed.max()) if len(changed) else 0
        entry["captions_changed_pct"] = 100.0 * float((changed > 0).float().mean()) if len(changed) else 0.0
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
            preserved_text_emb = torch.where(invalid[:, None], clean_text_emb, text_emb)
            preserved_hits = retrieval_hits(image_emb @ preserved_text_emb.T, image_of_text)
            preserved = {**recall_from_hits(preserved_hits), **attack_success_rates(clean_hits, preserved_hits)}
            entry.update({f"{key}_meaning_preserved": value for key, value in preserved.items()})
    return entry


def evaluate(
    victim_bundle,
    source_dataset,
    split: str | None = "test",
    attacks: Sequence[str | Attack] = DEFAULT_ATTACKS,
    attacker_bundle=None,
    batch_size: int = 32,
    captions_per_image: int | None = None,
    limit: int | None = None,
    save_adv: str | Path | None = None,
    attack_options: dict | None = None,
    caption_checker: CaptionChecker | None = None,
    text_batch: int = 256,
    seed: int = 0,
    progress: bool = True,
    caption_preprocess: str | None = None,
) -> dict:
    """Retrieval metrics of `victim_bundle` on `split` of `source_dataset`, clean and under `attacks`.

    `attacks`: names from `train.attacks.ATTACK_NAMES` (built on the attacker with
    `attack_options`, see `build_attack`; the seed defaults to `seed`) or ready-made `Attack`
    objects (built on the attacker). `attacker_bundle`: None for white-box, another
    `ClipBundle` for transfer. `save_adv`: folder; each attack's adversarial examples are written
    there as a pool (`save_adv/<attack>/`). `caption_preprocess`: "none" or "pre_caption"
    (None: the protocol's choice, `attack_options["protocol"]`). Returns the dict `train eval` writes as eval.json:
    {"protocol", "victim", "attacker", "settings", "attacks": {name: {metrics, asr, params, ...}}}.
    """
    from tqdm.auto import tqdm

    victim = ClipVictim.from_bundle(victim_bundle)
    attacker_bundle = attacker_bundle or victim_bundle
    transfer = attacker_bundle is not victim_bundle
    attacker = ClipVictim.from_bundle(attacker_bundle) if transfer else victim
    options = {"seed": seed, "text_batch": text_batch, **(attack_options or {})}
    built = build_attacks(list(attacks), attacker, options)
    built.pop("clean", None)  # clean numbers are always computed
    if caption_preprocess is None:
        from train.attacks import PROTOCOL_CHOICES

        caption_preprocess = PROTOCOL_CHOICES[options.get("protocol") or "project"].caption_preprocess
    gallery = Gallery.from_source(source_dataset, split, limit, captions_per_image, caption_preprocess)
    if not gallery.captions:
        raise ValueError("the evaluated images have no captions")
    records = {name: AttackRecord(attack) for name, attack in built.items()}
    writers = _pool_writers(save_adv, built, gallery, attacker_bundle, split, limit, seed, batch_size)

    clean_image_emb, clean_text_emb = [], []
    bar = tqdm(total=len(gallery), desc="evaluating", unit="img", disable=not progress)
    for batch_index, (start, rows, text_ids) in enumerate(gallery.batches(batch_size)):
        texts = [gallery.captions[i] for i in text_ids.tolist()]
        local_pairing = gallery.image_of_text[text_ids] - start
        victim_pixels = _pixels(victim_bundle, rows, victim.device)
        clean_image_emb.append(_encode_images(victim, victim_pixels))
        clean_text_emb.append(_encode_texts(victim, texts, text_batch))
        attacker_pixels = _pixels(attacker_bundle, rows, attacker.device) if transfer else victim_pixels
        for name, record in records.items():
            bar.set_postfix_str(name)
            began = time.perf_counter()
            result = record.attack(attacker_pixels, texts, local_pairing)
            record.seconds += time.perf_counter() - began
            caption_rows = [rows[int(image) - start] for image in gallery.image_of_text[text_ids]]
            record.add_batch(result, attacker_pixels, victim, victim_bundle.image_size, text_batch, caption_checker, caption_rows)
            if name in writers:
                writers[name].write_shard(batch_index, _adversarial_pool_rows(
                    name, record.attack, rows, gallery, text_ids, start, result.images, result.texts,
                    result.info.get("words_changed", []), model_id(attacker_bundle), seed))
        bar.update(len(rows))
    bar.close()

    clean_image = torch.cat(clean_image_emb)
    clean_text = torch.cat(clean_text_emb)
    clean_hits = retrieval_hits(clean_image @ clean_text.T, gallery.image_of_text)
    results: dict[str, Any] = {"clean": {"modality": "none", **recall_from_hits(clean_hits),
                                         **attack_success_rates(clean_hits, clean_hits), "params": {}}}
    for name, record in records.items():
        results[name] = _summarise(record, clean_image, clean_text, gallery.image_of_text, clean_hits, caption_checker is not None)
    for name, writer in writers.items():
        writer.finalize(expected_shards=batch_index + 1)
        results[name]["adversarial_pool"] = str(writer.out_dir)
    order = ["clean"] + [name for name in records]
    return {
        "protocol": PROTOCOL,
        "victim": model_id(victim_bundle),
        "attacker": model_id(attacker_bundle),
        "settings": {
            "mode": "transfer" if transfer else "white-box",
            "split": split, "num_images": len(gallery), "num_captions": len(gallery.captions),
            "captions_per_image": captions_per_image, "limit": limit, "batch_size": batch_size,
            "text_batch": text_batch, "seed": seed, "ks": list(KS),
            "attack_options": {k: (v[2] if k == "mlm" and isinstance(v, tuple) else v) for k, v in options.items()},
            "caption_preprocess": caption_preprocess,
            "caption_checker": getattr(caption_checker, "__name__", None) if caption_checker else None,
        },
        "attacks": {name: results[name] for name in order},
    }


def _pool_writers(save_adv, attacks: dict[str, Attack], gallery: Gallery, attacker_bundle, split, limit, seed, batch_size) -> dict:
    """One pool writer per attack under `save_adv` (overwritten: evaluation recomputes everything)."""
    if save_adv is None:
        return {}
    from augment.pool import PoolWriter
    from augment.sources import source_fingerprint

    fingerprint = source_fingerprint(gallery.rows)
    writers = {}
    for name, attack in attacks.items():
        meta = {
            "method": "adversarial", "name": f"adversarial-{name}", "model": model_id(attacker_bundle),
            "params": {"attack": name, **attack.params()}, "seed": seed, "source_fingerprint": fingerprint,
            "split": split, "limit": limit, "n": 1, "shard_size": batch_size,
            "description": f"adversarial examples of the {name} attack ({attack.modality}); see provenance per row",
        }
        writers[name] = PoolWriter(Path(save_adv) / name, meta, overwrite=True)
    return writers


# ----------------------------------------------------------------------------- report


TABLE_COLUMNS = (("TR@1", "tr@1"), ("TR@5", "tr@5"), ("TR@10", "tr@10"), ("IR@1", "ir@1"), ("IR@5", "ir@5"),
                 ("IR@10", "ir@10"), ("RSUM", "rsum"), ("ASR TR@1", "asr_tr@1"), ("ASR IR@1", "asr_ir@1"))


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


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
        lines.append(f"| {name} | " + " | ".join(_cell(entry.get(key)) for _, key in TABLE_COLUMNS) + " |")
    lines += [
        "",
        "TR@K / IR@K / RSUM are recalls (%) UNDER the attack (R@1 under attack); ASR columns are attack success "
        "rates (%): the share of queries correct at R@1 on clean data that the attack makes wrong.",
        "",
        report["protocol"],
    ]
    checked = {n: e for n, e in report["attacks"].items() if "meaning_preserved" in e}
    if checked:
        lines += ["", "| attack | changed captions still true (%) | TR@1 meaning-preserved | IR@1 meaning-preserved |",
                  "|---|---:|---:|---:|"]
        for name, entry in checked.items():
            lines.append(f"| {name} | {_cell(entry['meaning_preserved']['true_pct'])} | "
                         f"{_cell(entry.get('tr@1_meaning_preserved'))} | {_cell(entry.get('ir@1_meaning_preserved'))} |")
    return "\n".join(lines) + "\n"
