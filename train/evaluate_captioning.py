"""Image captioning under attack: caption metrics clean and under each attack, with the drop.

Protocol:

1. The split's images (at most `limit`) and their captions (the first `captions_per_image`, or
   all) are the evaluated images and their references (`train.eval_common.Gallery`, as retrieval).
2. Attack by attack, batch by batch (`batch_size` images with all their references): the
   attacker (the victim in white-box mode, another captioner in transfer mode) crafts
   adversarial images (and, for prompted captioners, prompts) against the references; the victim
   captions them (beam search 3, 20 tokens at most, 5 at least: BLIP's COCO setting, unless
   `generation` says otherwise). "clean" captions the unattacked images. In transfer mode the
   adversarial images are resized (bicubic) to the victim's resolution when the two differ.
3. Metrics over all images (`train.caption_metrics`, pycocoevalcap): BLEU-4, METEOR (when Java
   is present), ROUGE-L, CIDEr, in percent; `drop` = clean minus attacked for each. The mean LM
   loss of the references under the victim (what the untargeted attacks maximise) is reported too.
4. With a `caption_checker` (the sample world's truth checker), the share of generated captions
   it calls true of their image (`truth.true_pct`), clean and under each attack: the world's
   ground truth for "the caption is still right".
5. The targeted attack also reports how often the generated caption IS the target.

Every finished batch can be kept (`progress_dir`, retrieval's `BatchStore`; each batch's attack is
seeded from (seed, attack, batch)), so a killed evaluation resumes to the same report.
"""
from __future__ import annotations

import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models.half_precision import active_precision
from train.attacks.captioning import (CAPTION_ATTACK_NAMES, PROMPT_ATTACKS, CaptionAttack, build_caption_attack,
                                      lm_losses)
from train.caption_metrics import (CJK_CHARACTERS, METRICS, caption_scores_of_sets, require_java_for_meteor,
                                   require_segmenter, simple_tokenize)
from train.eval_common import evaluated_in_eval_mode

CaptionChecker = Callable[[str, dict], "bool | None"]
DEFAULT_CAPTION_ATTACKS = ("clean", "pgd", "pgd-targeted")
EXAMPLES = 5  # generated captions per attack kept in the report

PROCEDURE = (
    "Each attack perturbs the images (L-inf PGD on [0, 1] pixels) and/or the prompt (word substitutions) of a batch "
    "against all reference captions of its images; the victim then captions the attacked inputs (beam search). "
    "pgd maximises the references' LM loss (untargeted); pgd-targeted minimises the LM loss of a target caption; "
    "prompt substitutes prompt words to maximise the references' LM loss; prompt-pgd does both. BLEU-4, METEOR, "
    "ROUGE-L and CIDEr (pycocoevalcap, percent) are computed over all images; drop = clean - attacked. truth: "
    "share of generated captions the sample world's truth checker calls true of their image."
)


def default_attacks(victim) -> tuple[str, ...]:
    """clean, pgd, pgd-targeted; plus prompt and prompt-pgd for prompted captioners."""
    return DEFAULT_CAPTION_ATTACKS + (PROMPT_ATTACKS if getattr(victim, "prompt", None) else ())


def build_caption_attacks(names: Sequence[str | CaptionAttack], attacker, options: dict) -> dict[str, CaptionAttack]:
    """Captioning attacks by name on `attacker` (retrieval's `build_attacks` with captioning's table)."""
    from train.eval_common import build_attacks

    if any(n in PROMPT_ATTACKS for n in names if isinstance(n, str)) and not getattr(attacker, "prompt", None):
        raise ValueError(f"the prompt attacks need a prompted captioner; '{attacker.name}' has no prompt (pass --prompt)")
    return build_attacks(names, attacker, options, build=build_caption_attack, mlm_attacks=PROMPT_ATTACKS)


# a space beside a CJK ideograph or kana: BERT's tokenizers (BLIP's) write one around every ideograph
_CJK_SPACE = re.compile(rf"(?<=[{CJK_CHARACTERS}]) | (?=[{CJK_CHARACTERS}])")


def _normalised(text: str) -> str:
    """The form a generated caption and a `pgd-targeted` target are compared in: the metrics' tokens,
    accents and the spaces beside CJK characters left out, as an uncased BERT tokenizer (BLIP's) writes
    text: its "un chien a la plage" and "一 只 狗" are the targets "un chien à la plage" and "一只狗"
    (they never counted as hits)."""
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return _CJK_SPACE.sub("", simple_tokenize(text))


class _Record:
    """What one attack produced: generated captions, verdicts, budgets (batch by batch, in order)."""

    FIELDS = ("captions", "verdicts", "reference_losses", "prompts", "target_hits")

    def __init__(self, attack: CaptionAttack | None):
        self.attack = attack
        self.captions: list[str] = []
        self.verdicts: list[bool | None] = []
        self.reference_losses: list[torch.Tensor] = []
        self.prompts: list[str] = []
        self.target_hits: list[bool] = []
        self.linf = 0.0
        self.seconds = 0.0

    def state(self) -> dict:
        """Plain lists, tensors and numbers: what `BatchStore` saves and `torch.load(weights_only=True)` reads."""
        return {**{key: getattr(self, key) for key in self.FIELDS}, "linf": self.linf, "seconds": self.seconds}

    @classmethod
    def problem(cls, state) -> str | None:
        """What is wrong with a kept batch (a `state()` read back) for `extend`, or None."""
        from train.eval_store import content_problem

        return content_problem(state, {**{key: (list, None) for key in cls.FIELDS},
                                       "linf": ((int, float), None), "seconds": ((int, float), None)})

    def extend(self, state: dict) -> None:
        """Append one batch (a `state()`)."""
        for key in self.FIELDS:
            getattr(self, key).extend(state[key])
        self.linf = max(self.linf, float(state["linf"]))
        self.seconds += float(state["seconds"])


@evaluated_in_eval_mode("victim", "attacker")
def evaluate_captioning(
    victim,
    source_dataset,
    split: str | None = "test",
    attacks: Sequence[str | CaptionAttack] | None = None,
    attacker=None,
    batch_size: int = 32,
    captions_per_image: int | None = None,
    limit: int | None = None,
    attack_options: dict | None = None,
    caption_checker: CaptionChecker | None = None,
    generation: dict | None = None,
    meteor: bool | None = None,
    java: bool | None = None,
    segment_cjk: str = "none",
    seed: int = 0,
    progress: bool = True,
    progress_dir: str | Path | None = None,
    save_adv: str | Path | None = None,
    workers: int = 0,
    source_meta: dict | None = None,
) -> dict:
    """Captioning metrics of `victim` (a `CaptioningModel`) on `split`, clean and under `attacks`.

    `attacks`: names from `CAPTION_ATTACK_NAMES` (default: `default_attacks(attacker)`), built on
    the attacker with `attack_options` (see `build_caption_attack`; the seed defaults to `seed`),
    or ready objects. `attacker`: None for white-box, another captioner for transfer.
    `generation`: keyword arguments for `victim.generate`. `progress_dir`: a folder keeping every
    finished batch (`train.eval_store.BatchStore`): a killed evaluation called again with the same
    settings skips them and gives the same report. `save_adv`: folder; each attack's adversarial
    inputs are written there as a pool (`save_adv/<attack>/`, see `_adversarial_rows`), each recording
    `source_meta` (how the source was read: `source`, `image_root`, ...). `workers`:
    DataLoader processes decoding the next batches' images (`train.eval_common.gallery_pixels`, as
    retrieval; 0: in this process). `segment_cjk`: how the metrics cut Chinese and Japanese text
    (`train.caption_metrics.segment_cjk`: none, chars, jieba).
    Returns the dict `train eval --task captioning` writes as eval.json; its "captions" entry holds
    every generated caption per attack (`write_captioning_report` writes them to captions.jsonl).
    """
    from train.eval_common import (Gallery, adversarial_pool_writers, attack_bars, gallery_decoding,
                                   plain_attack_options, resume_settings)
    from train.eval_store import BatchStore, settings_with_placed_images

    require_java_for_meteor(meteor)  # before any caption is generated
    require_segmenter(segment_cjk)
    attacker = attacker or victim
    gallery = Gallery.from_source(source_dataset, split, limit, captions_per_image)
    decoding = gallery_decoding(gallery, {"victim": victim.preprocess_eval, "attacker": attacker.preprocess_eval},
                                workers)
    run = _CaptioningRun(victim, attacker, gallery, _references(gallery, split), batch_size, seed,
                         dict(generation or {}), caption_checker, decoding)
    options = {"seed": seed, **(attack_options or {})}
    built = _build_evaluated_attacks(attacks, victim, attacker, options)
    settings = resume_settings(
        victim, attacker, gallery, progress_dir is not None, split, limit, captions_per_image, batch_size, seed, built,
        source_meta, options=plain_attack_options(options), generation=run.generation,
        checker=getattr(caption_checker, "__name__", None), precision=active_precision(victim.device))
    run.store = (BatchStore(progress_dir, settings, settings_with_placed_images(settings, gallery.rows))
                 if progress_dir is not None else None)
    # every row holds an image: the attacked one, or the clean one beside an attacked prompt
    run.writers = adversarial_pool_writers(save_adv, built, source_dataset, attacker, split, limit, seed, batch_size,
                                           progress_dir, items=len(gallery), source_meta=source_meta,
                                           row_modality=lambda attack: "image")
    records: dict[str, _Record] = {"clean": _Record(None), **{name: _Record(a) for name, a in built.items()}}

    with decoding:
        for name, record, bar in attack_bars(records, len(gallery), "evaluating captions", progress):
            run.caption_gallery(name, record, bar)
    return run.report(records, settings, meteor, java, segment_cjk)


def _references(gallery, split: str | None) -> list[list[str]]:
    """Each evaluated image's reference captions; ValueError for a split without images or an image without any."""
    if len(gallery) == 0:
        raise ValueError(f"split {split!r} has no images")
    references: list[list[str]] = [[] for _ in range(len(gallery))]
    for caption, image in zip(gallery.captions, gallery.image_of_text.tolist()):
        references[image].append(caption)
    if any(not refs for refs in references):
        raise ValueError("every evaluated image needs at least one reference caption")
    return references


def _build_evaluated_attacks(attacks: Sequence[str | CaptionAttack] | None, victim, attacker,
                             options: dict) -> dict[str, CaptionAttack]:
    """The attacks to run besides clean (`attacks`, default `default_attacks(attacker)`), built on the attacker."""
    names = list(attacks) if attacks is not None else list(default_attacks(attacker))
    if attacker is not victim and any(n in PROMPT_ATTACKS for n in names) and not getattr(victim, "prompt", None):
        raise ValueError(f"transferred prompt attacks need a prompted victim; '{victim.name}' has no prompt (pass --prompt)")
    return build_caption_attacks([n for n in names if n != "clean"], attacker, options)


@dataclass
class _CaptioningRun:
    """What every batch and the report of one captioning evaluation read: the models, the gallery
    and its references, the generation and checker, and where finished batches and pools go."""

    victim: Any
    attacker: Any  # the victim itself in white-box mode
    gallery: Any  # train.eval_common.Gallery
    references: list[list[str]]
    batch_size: int
    seed: int
    generation: dict
    caption_checker: CaptionChecker | None
    decoding: Any  # train.eval_common.gallery_decoding: by the "victim"'s or the "attacker"'s preprocessing
    store: Any = None  # train.eval_store.BatchStore, or None: nothing kept for resuming
    writers: dict = field(default_factory=dict)  # attack name -> its adversarial pool's writer

    def caption_gallery(self, name: str, record: _Record, bar) -> None:
        """Every batch of attack `name` (clean: none) into `record`, in gallery order: read back where a
        resumed evaluation kept it, else attacked, captioned and kept."""
        from train.eval_common import advance_resumed, resumable_batches

        batch_index = -1
        # the clean row captions the victim's pixels; an attack is crafted on the attacker's
        view = "victim" if record.attack is None else "attacker"
        for batch_index, start, text_ids, decoded in resumable_batches(
                self.gallery, self.batch_size, self.decoding, view, self.store, self.writers, name):
            if decoded is None:
                record.extend(self.store.load_state(name, batch_index, _Record.problem))
                advance_resumed(bar, min(self.batch_size, len(self.gallery) - start))
                continue
            pixels, rows = decoded
            part = self.caption_batch(name, record.attack, batch_index, start, text_ids, pixels, rows)
            if self.store is not None:
                self.store.save(name, batch_index, part)
            record.extend(part.state())
            bar.update(len(rows))
        if name in self.writers:
            self.writers[name].finalize(expected_shards=batch_index + 1)

    def caption_batch(self, name: str, attack: CaptionAttack | None, batch_index: int, start: int,
                      text_ids: torch.Tensor, pixels: torch.Tensor, rows: list[dict]) -> _Record:
        """One batch attacked (clean: as it is) and captioned by the victim: its captions, reference
        losses, prompts, target hits and verdicts; its adversarial inputs written to the attack's pool."""
        from train.data import derive_seed
        from train.eval_common import reseed_attack, to_victim_resolution

        texts = [self.gallery.captions[i] for i in text_ids.tolist()]
        pairing = self.gallery.image_of_text[text_ids] - start
        part = _Record(attack)
        began = time.perf_counter()
        if attack is None:
            images, prompts, info = pixels.to(self.victim.device), None, {}
        else:
            attacker_pixels = pixels.to(self.attacker.device)
            reseed_attack(attack, derive_seed(self.seed, name, batch_index))  # a resumed batch draws what it drew before
            result = attack(attacker_pixels, texts, pairing)
            info = result.info
            prompts = info.get("prompts")
            part.linf = float((result.images - attacker_pixels).abs().max())
            images = to_victim_resolution(result.images.to(self.victim.device), self.victim.image_size)
            if name in self.writers:
                self.writers[name].write_shard(batch_index, _adversarial_rows(
                    name, attack, rows, result.images, prompts, info, self.attacker.describe(), self.seed))
        captions = self.victim.generate(images, prompts=prompts, **self.generation)
        part.seconds = time.perf_counter() - began
        with torch.no_grad():
            text_prompts = [prompts[i] for i in pairing.tolist()] if prompts is not None else None
            part.reference_losses.append(lm_losses(self.victim, images, texts, text_prompts, rows=pairing).cpu())
        part.captions = list(captions)
        part.prompts = list(prompts) if prompts is not None else []
        if "targets" in info:
            part.target_hits = [_normalised(c) == _normalised(t) for c, t in zip(captions, info["targets"])]
        if self.caption_checker is not None:
            part.verdicts = [self.caption_checker(caption, row) for caption, row in zip(captions, rows)]
        return part

    def report(self, records: dict[str, _Record], settings: dict, meteor: bool | None, java: bool | None,
               segment_cjk: str = "none") -> dict:
        """The evaluation's report (`settings`: what it ran with, as its batch store keeps them)."""
        results, notes = self.scored_entries(records, meteor, java, segment_cjk)
        return {
            "task": "captioning",
            "procedure": PROCEDURE,
            "victim": self.victim.describe(),
            "attacker": self.attacker.describe(),
            "settings": {
                "mode": "transfer" if self.attacker is not self.victim else "white-box",
                "split": settings["split"], "num_images": len(self.gallery), "num_references": len(self.gallery.captions),
                "captions_per_image": settings["captions_per_image"], "limit": settings["limit"],
                "batch_size": self.batch_size, "seed": self.seed,
                "generation": {**_generation_defaults(), **self.generation},
                "attack_options": settings["options"],
                "caption_checker": getattr(self.caption_checker, "__name__", None) if self.caption_checker else None,
                "precision": settings["precision"], "device": torch.device(self.victim.device).type,
                "metrics": "pycocoevalcap " + _version("pycocoevalcap"),
                "segment_cjk": segment_cjk,
            },
            "notes": notes,
            "attacks": results,
            "captions": {name: record.captions for name, record in records.items()},
            "image_ids": list(self.gallery.rows["image_id"]),
        }

    def scored_entries(self, records: dict[str, _Record], meteor: bool | None, java: bool | None,
                       segment_cjk: str = "none") -> tuple[dict[str, Any], list[str]]:
        """Each attack's report entry (`_report_entry`) with its drop from clean, and the metrics' notes."""
        results: dict[str, Any] = {}
        notes: list[str] = []
        # one METEOR process and one tokenizer call for every attack (`caption_scores_of_sets`)
        every_scores = caption_scores_of_sets(self.references, {name: record.captions for name, record in records.items()},
                                              meteor=meteor, java=java, segment=segment_cjk)
        for name, record in records.items():
            scores = every_scores[name]
            notes += [n for n in scores.pop("notes") if n not in notes]
            results[name] = _report_entry(record, scores, getattr(self.attacker, "prompt", "") or "",
                                          self.caption_checker is not None, self.writers.get(name))
        clean = results["clean"]
        for name, entry in results.items():
            entry["drop"] = {m: (clean[m] - entry[m] if clean.get(m) is not None and entry.get(m) is not None else None)
                             for m in METRICS}
            if self.caption_checker is not None:
                entry["drop"]["truth_pct"] = clean["truth"]["true_pct"] - entry["truth"]["true_pct"]
        return results, notes


def _report_entry(record: "_Record", scores: dict, default_prompt: str, judged_by_checker: bool, writer) -> dict:
    """One attack's eval.json entry: its caption metrics (`scores`), reference loss, budget, prompts,
    target hits and truth verdicts, and where its adversarial pool went (`writer`, or None)."""
    scores = {k: v for k, v in scores.items() if k != "per_image_cider"}
    entry: dict[str, Any] = {
        "modality": record.attack.modality if record.attack is not None else "none",
        **scores,
        "reference_loss": float(torch.cat(record.reference_losses).mean()),
        "params": record.attack.params() if record.attack is not None else {},
        "seconds": round(record.seconds, 3),
        "examples": record.captions[:EXAMPLES],
    }
    if record.attack is not None and record.attack.modality in ("image", "multimodal"):
        entry["linf_max"] = record.linf
    if record.prompts:
        entry["prompts_changed_pct"] = 100.0 * sum(p != default_prompt for p in record.prompts) / len(record.prompts)
        entry["prompt_examples"] = record.prompts[:EXAMPLES]
    if record.target_hits:
        entry["target_hit_pct"] = 100.0 * sum(record.target_hits) / len(record.target_hits)
    if judged_by_checker:
        judged = [v for v in record.verdicts if v is not None]
        entry["truth"] = {"captions": len(record.verdicts), "judged": len(judged), "true": sum(judged),
                          "false": len(judged) - sum(judged),
                          "true_pct": 100.0 * sum(judged) / len(record.verdicts) if record.verdicts else None}
    if writer is not None:
        entry["adversarial_pool"] = str(writer.out_dir)
    return entry


def _adversarial_rows(name: str, attack: CaptionAttack, rows: list[dict], adversarial_images: torch.Tensor,
                      prompts: Sequence[str] | None, info: dict, attacker: dict, seed: int) -> list[dict]:
    """Pool rows (schema `augment.schema.POOL_FEATURES`) for one batch: one image row per image,
    the adversarial input the captioner saw: its (attacked) image as PNG, and in the provenance the
    attacked prompt and the target caption, if any (a prompt is no caption of the image, so it is
    not put in the caption column). The prompt attack leaves images as they are."""
    from PIL import Image

    from augment.pool import make_row_id

    # PNG (lossless) keeps the perturbation up to 8-bit rounding (<= 0.5/255 per pixel)
    array = (adversarial_images.detach().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = []
    for index, source in enumerate(rows):
        provenance = {"attack": name, "attack_params": attack.params(), "attacker": attacker}
        if prompts is not None:
            provenance["prompt"] = prompts[index]
        if "targets" in info:
            provenance["target"] = info["targets"][index]
        out.append({
            "row_id": make_row_id(f"adversarial-{name}", source["image_id"], -1, 0),
            "source_image_id": source["image_id"], "source_caption_index": -1, "split": source["split"],
            "modality": "image", "image": Image.fromarray(array[index], mode="RGB"), "caption": None,
            "method": "adversarial", "seed": seed, "provenance": json.dumps(provenance, sort_keys=True, default=str),
        })
    return out


def write_captioning_report(report: dict, out_dir: str | Path) -> str:
    """eval.json and eval.md (through `train.eval_report.write_report`, the one writer) and captions.jsonl
    (every generated caption per attack, taken out of the report); returns the markdown table."""
    from augment.atomic import atomic_write_text
    from train.eval_report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    captions = report.pop("captions", None)
    image_ids = report.pop("image_ids", None)
    if captions is not None and image_ids is not None:
        atomic_write_text(out / "captions.jsonl", "".join(
            json.dumps({"image_id": image_id, **{name: c[index] for name, c in captions.items()}}) + "\n"
            for index, image_id in enumerate(image_ids)))
    return write_report(report, out, markdown_report)


def _generation_defaults() -> dict:
    from models.captioner import DEFAULT_GENERATION

    return dict(DEFAULT_GENERATION)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- report


def markdown_report(report: dict) -> str:
    """eval.md: one row per attack: the four metrics, the CIDEr drop, the truth-checked share."""
    from train.eval_report import percent_cell, settings_markdown

    settings, victim = report["settings"], report["victim"]
    with_truth = any("truth" in entry for entry in report["attacks"].values())
    header = ["attack", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CIDEr drop", "ref. LM loss"]
    if with_truth:
        header += ["true (%)", "true drop"]
    lines = [
        f"# Captioning robustness: {victim['name']}" + (f" (prompt: '{victim['prompt']}')" if victim.get("prompt") else ""),
        "",
        f"Split `{settings['split']}`: {settings['num_images']} images, {settings['num_references']} reference captions; "
        + ("white-box attacks." if settings.get("mode", "white-box") == "white-box"
           else f"transfer attacks crafted on {report['attacker']['name']}."),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for name, entry in report["attacks"].items():
        cells = [entry.get("bleu4"), entry.get("meteor"), entry.get("rouge_l"), entry.get("cider"),
                 entry["drop"].get("cider"), entry.get("reference_loss")]
        row = [percent_cell(v) if i != 5 else (f"{v:.3f}" if v is not None else "-") for i, v in enumerate(cells)]
        if with_truth:
            row += [percent_cell(entry["truth"]["true_pct"]), percent_cell(entry["drop"].get("truth_pct"))]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "Metrics in percent under the attack (pycocoevalcap); drop = clean - attacked. "
              "ref. LM loss: mean token cross-entropy of the reference captions (what untargeted attacks raise)."]
    targeted = {n: e for n, e in report["attacks"].items() if "target_hit_pct" in e}
    for name, entry in targeted.items():
        lines.append(f"`{name}`: the caption equals the target '{entry['params'].get('target')}' for "
                     f"{entry['target_hit_pct']:.1f}% of the images.")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}.")
    lines += ["", report["procedure"]]
    lines += settings_markdown(report)
    return "\n".join(lines) + "\n"


__all__ = ["CAPTION_ATTACK_NAMES", "DEFAULT_CAPTION_ATTACKS", "evaluate_captioning", "markdown_report", "write_captioning_report"]
