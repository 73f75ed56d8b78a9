"""What makes an evaluation resumable: its finished batches on disk, and the fingerprints that say
they were made with the same data and weights.

Every task's evaluation (`train.evaluate`, `train.evaluate_captioning`, `train.evaluate_grounding`)
keeps its finished (attack, batch) results in a `BatchStore` under `progress_dir`; a killed
evaluation called again with the same settings resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from augment.atomic import atomic_write_text, naming_write_errors, temporary_path
from train.checkpoint import load_tensors, save_tensors

SETTINGS_FILE = "settings.json"  # a store's tag: the settings its batches were made with
_RESTART = "run train eval with --restart (its other finished batches are lost too), or delete that file"


def data_identity(rows, victim, attacker, root: str | None = None) -> dict:
    """The resume tag's fingerprints of what names do not say: the evaluated rows (ids, captions),
    the files their images are read from (another --image-root, an image replaced in place), and
    the weights (`weights_identity`). `root`: the source's folder, inside which image paths are
    recorded relative to it (`image_files_fingerprint`), so an evaluation folder moved with its source
    (`mv` keeps the files' times) resumes, as a pool's scores are kept (`augment score`'s inputs_key)."""
    from augment.sources import image_files_fingerprint, source_fingerprint

    return {"source": source_fingerprint(rows), "image_files": image_files_fingerprint(rows, root=root),
            **weights_identity(victim, attacker)}


def settings_with_placed_images(settings: dict, rows) -> dict | None:
    """`settings` as an evaluation recorded them before 2026-12-07: its image files by absolute path, as
    `images` (`image_files` since); None for settings without image fingerprints. A `BatchStore` accepts
    a folder tagged so where nothing moved."""
    from augment.sources import image_files_fingerprint

    if "image_files" not in settings:
        return None
    return {**{key: value for key, value in settings.items() if key != "image_files"},
            "images": image_files_fingerprint(rows)}


def substitute_model_identity(built: dict) -> dict:
    """The resume tag's fingerprint of the masked LMs the attacks in `built` draw substitute words from
    (their `source`, or their parts'): names alone miss an MLM folder retrained in place or another
    revision cached under one Hub id. Empty when no attack reads a masked LM."""
    from train.attacks.base import attack_parts

    models = {}
    for attack in built.values():
        for part in attack_parts(attack):
            model = getattr(getattr(part, "source", None), "model", None)
            if isinstance(model, torch.nn.Module):
                models[id(model)] = model
    return {"mlm_weights": sorted(weights_fingerprint(model) for model in models.values())} if models else {}


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """A short digest of a model's weights, in the resume tag of an evaluation: a checkpoint folder
    retrained in place (the same name, other weights) must not resume another's finished batches.
    Per tensor its name, shape, and float64 sum and absolute sum, on the CPU (deterministic whatever
    the device; one pass over the weights, not a cryptographic hash)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        values = tensor.detach().to("cpu", torch.float64)
        digest.update(f"{name} {tuple(values.shape)} {float(values.sum())!r} {float(values.abs().sum())!r};".encode())
    return digest.hexdigest()[:16]


def weights_identity(victim, attacker) -> dict:
    """The resume tag's weight fingerprints (`weights_fingerprint`): the attacker's is the victim's in
    white-box mode, not computed twice."""
    weights = weights_fingerprint(victim)
    return {"weights": weights, "attacker_weights": weights if attacker is victim else weights_fingerprint(attacker)}


TRASH_PREFIX = ".trash-"  # a folder being deleted: renamed first, so no reader ever meets it half-deleted


def remove_tree(path: str | Path) -> None:
    """Delete the folder `path` as one step from a reader's view: renamed to a hidden trash name
    beside it (`TRASH_PREFIX`; one rename, atomic), then deleted. `shutil.rmtree` alone deletes in
    directory order, so a kill part-way could leave an attack's batches without their summary.json
    (and their pixels already gone), which a resumed evaluation would read as finished and fail
    on. A trash folder a kill leaves is deleted by the next run (`clear_trash`), never read."""
    import shutil

    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(TRASH_PREFIX + path.name)
    if trash.exists():  # a killed run's leftover of the same name: os.replace cannot rename over a folder
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clear_trash(folder: str | Path) -> None:
    """Delete the trash folders (`remove_tree`) a killed run left in `folder` and beside it (its own)."""
    import shutil

    folder = Path(folder)
    leftovers = list(folder.glob(TRASH_PREFIX + "*")) if folder.is_dir() else []
    for trash in [*leftovers, folder.with_name(TRASH_PREFIX + folder.name)]:
        shutil.rmtree(trash, ignore_errors=True)


def remove_finished_store(folder: str | Path) -> None:
    """Delete a finished evaluation's store, its `settings.json` last and each attack's folder as
    one step (`remove_tree`): a kill part-way leaves a store the same command resumes (re-doing
    only the attacks already deleted, to the same report), never finished batches without the
    settings they were made with (refused), nor an attack's batches without its summary.json
    whose pixels are gone (unresumable)."""
    import shutil

    folder = Path(folder)
    if not folder.exists():
        return
    for entry in folder.iterdir():
        if entry.name == SETTINGS_FILE or entry.name.startswith(TRASH_PREFIX):
            continue
        if entry.is_dir():
            remove_tree(entry)
        else:
            entry.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


# settings.json's "progress_format": raised when a change of the code changes what the kept batches
# hold or how the settings are recorded, so that a version refusing an earlier one's progress says so
# (the settings that differed were named as if the user had changed them). 2: 2026-12-05. 3: 2026-12-06, a text
# part of budget 0 records `source none` and no `mlm_weights` (`NoSubstitutes`: no masked LM loaded); an earlier
# format's settings.json holding exactly this version's settings still resumes (`_same_before_format`). 4: 2026-12-07,
# a word attack's batches of an earlier format are not resumed (`_word_search_changed`): the project reading split
# and accepted words otherwise before 2026-12-06 (words of other scripts and accents, curly apostrophes, zero-width
# joiners: cfb07db, 408f6e5, 84f1dd6, within format 2), and the reference reading took BERT's `[unused]` placeholders
# as substitutes until 2026-12-06 22:51 (edfba0a, within format 3), neither of which settings.json records.
FORMAT_KEY, PROGRESS_FORMAT = "progress_format", 4


class BatchStore:
    """Finished batches of an evaluation, one file each, so a killed evaluation resumes.

    `DIR/settings.json` holds the settings the batches were made with. A folder holding finished
    batches made with other settings is refused (MatPlusError naming the settings that differ:
    hours of attacks are not thrown away because an option changed; `train eval --restart` discards
    them); a folder without finished batches is simply reused. Each batch is written to a
    temporary name and renamed into place, and read back with `torch.load(weights_only=True)`
    (tensors, strings, numbers only): `ATTACK/batch-NNNNN.pt`, and `ATTACK/pixels-NNNNN.pt` for
    the adversarial pixels re-ranking reads back. The clean pass is kept as `clean.pt`, and a
    finished attack's report entry as `ATTACK/summary.json` (its pixels then deleted), so a resumed
    evaluation neither encodes nor re-ranks them again and disk holds one attack's pixels.
    """

    def __init__(self, folder: str | Path, settings: dict, placed: dict | None = None):
        """`placed`: the same settings as recorded before 2026-12-07 (`settings_with_placed_images`), which
        a folder tagged then is accepted under (and tagged again as now)."""
        self.folder = Path(folder)
        clear_trash(self.folder)  # a killed clean-up's leftovers: never read as progress
        wanted = _tag(settings)
        marker = self.folder / SETTINGS_FILE
        try:
            found = marker.read_text(encoding="utf-8") if marker.is_file() else None
        except UnicodeDecodeError:  # damaged (not UTF-8): no evaluation can resume its batches; a traceback before
            found = ""
        # a folder tagged before image paths were relative to the source: compared with the settings as then
        placed_form = placed is not None and bool(_recorded_keys(found) & (_keys_of(placed) - _keys_of(settings)))
        if placed_form:
            settings = placed
        compared = _tag(settings)  # `wanted`, or a folder's tag as then
        if self.folder.exists() and found != compared and not _same_before_format(found, settings):
            finished = sorted(self.folder.rglob("batch-*.pt"))
            if finished:
                from augment.errors import MatPlusError

                changed = _word_search_changed(found, settings)
                if changed:
                    raise MatPlusError(
                        f"{self.folder} holds {len(finished)} finished batches an earlier mat-plus wrote, whose word "
                        f"attacks ({', '.join(changed)}) chose words and substitutes as this version no longer does "
                        "(2026-12-06: words of other scripts, accents and curly apostrophes; BERT's [unused] "
                        "placeholders under --protocol sga|co-attack), so resuming would mix both: finish them with "
                        "that version, or discard them (train eval --restart)")
                differences = _settings_differences(found, compared)
                if differences is None:  # no command can resume batches of unknown settings
                    raise MatPlusError(f"{self.folder} holds {len(finished)} finished batches whose {SETTINGS_FILE} is "
                                       "missing or damaged, so no evaluation can resume them: discard them "
                                       "(train eval --restart)")
                # image files that differ are the files, not how a version recorded them (the same since 2026-12-01)
                if json.loads(found).get(FORMAT_KEY) != PROGRESS_FORMAT and \
                        not set(_differing_keys(json.loads(found), json.loads(compared))) <= {("images", None), ("data", "fingerprint")}:
                    # maybe no setting the user changed (keys this version records are missing there): the
                    # command they ran may well be that evaluation's, which the line below tells them to run
                    raise MatPlusError(
                        f"{self.folder} holds {len(finished)} finished batches an earlier mat-plus wrote, with "
                        f"settings this version records otherwise ({differences}): if that evaluation's command "
                        "is not the one you ran, run it to finish them; else finish them with that version, or "
                        "discard them (train eval --restart)")
                raise MatPlusError(
                    f"{self.folder} holds {len(finished)} finished batches of an evaluation with other settings "
                    f"({differences}): run that evaluation's command again to finish it, "
                    f"or discard them (train eval --restart)")
            remove_tree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not marker.is_file() or (placed_form and self.folder.exists()):  # (tagged as now: it resumes once moved)
            atomic_write_text(marker, wanted)  # a half-written marker would refuse the resume it guards
        kept = self.finished_batches()
        if kept:  # say so: a resumed evaluation's progress bar alone does not tell why it starts ahead
            print(f"resuming from {self.folder}: {sum(kept.values())} finished batches kept "
                  f"({', '.join(f'{name} {count}' for name, count in kept.items())}); train eval --restart discards them",
                  file=sys.stderr)

    def finished_batches(self) -> dict[str, int]:
        """{attack: finished batches} held in the folder, in attack-name order."""
        counts: dict[str, int] = {}
        for path in sorted(self.folder.glob("*/batch-*.pt")):
            counts[path.parent.name] = counts.get(path.parent.name, 0) + 1
        return counts

    def _path(self, attack: str, batch: int) -> Path:
        return self.folder / attack / f"batch-{batch:05d}.pt"

    def _pixels_path(self, attack: str, batch: int) -> Path:
        return self.folder / attack / f"pixels-{batch:05d}.pt"

    def _summary_path(self, attack: str) -> Path:
        return self.folder / attack / "summary.json"

    def has(self, attack: str, batch: int) -> bool:
        return self._path(attack, batch).is_file()

    @staticmethod
    def _write(path: Path, value) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        with naming_write_errors(path, tmp):  # a failed write: an OSError naming `path`, and no .tmp file left behind
            save_tensors(value, tmp)
            os.replace(tmp, path)

    def save(self, attack: str, batch: int, record) -> None:
        """A finished batch: `record.state()`, and apart from it the record's `images` when it has
        some (re-ranking reads them back, `load_pixels`), written first: a batch counted as
        finished always has its pixels."""
        pixels = getattr(record, "images", None)
        if pixels:
            self._write(self._pixels_path(attack, batch), pixels)
        self._write(self._path(attack, batch), record.state())

    def load_pixels(self, attack: str, batch: int, images: int | None = None) -> torch.Tensor:
        """The pixels saved with a batch ([B, 3, H, W], on the CPU; `images`: B, checked when given); a
        batch saved before pixels had files of their own holds them itself."""
        path = self._pixels_path(attack, batch)
        if path.is_file():
            pixels = _checked(path, load_tensors(path, _RESTART), lambda value: tensors_problem(value, images, dims=4))
        else:
            path = self._path(attack, batch)
            pixels = self.load_state(attack, batch).get("images")
            _checked(path, pixels, lambda value: value and tensors_problem(value, images, dims=4))
        if not pixels:
            from augment.errors import MatPlusError

            raise MatPlusError(f"{path}: the pixels of a finished batch are missing; run train eval with --restart")
        return torch.cat(pixels)

    def save_clean(self, clean) -> None:
        """The clean pass (`train.evaluate.CleanGallery`: embeddings and per-query hits), so a resumed
        evaluation does not encode and score (re-rank) the gallery again."""
        self._write(self.folder / "clean.pt", {"image_emb": clean.image_emb, "text_emb": clean.text_emb,
                                               "hits": clean.hits})

    def load_clean(self, check: Callable[[Any], str | None] | None = None) -> dict | None:
        """The clean pass `save_clean` kept, or None; `check(content)`: what is wrong with it, or None."""
        path = self.folder / "clean.pt"
        return _checked(path, load_tensors(path, _RESTART), check) if path.is_file() else None

    def save_summary(self, attack: str, entry: dict) -> None:
        """An attack's finished report entry (JSON), so a resumed evaluation takes it as it is
        instead of re-ranking the gallery again; its batches' pixels are then deleted (disk holds
        one attack's pixels at a time)."""
        path = self._summary_path(attack)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, default=str))
        for pixels in path.parent.glob("pixels-*.pt"):
            pixels.unlink()

    def load_summary(self, attack: str) -> dict | None:
        """The entry `save_summary` kept, or None."""
        path = self._summary_path(attack)
        if not path.is_file():
            return None
        from augment.errors import MatPlusError, first_line
        from augment.json_records import DamagedRecord, read_json_object

        try:
            return read_json_object(path)
        except (OSError, DamagedRecord) as error:
            raise MatPlusError(f"{path}: unreadable ({first_line(error)}); {_RESTART}") from None

    def load_state(self, attack: str, batch: int, check: Callable[[Any], str | None] | None = None) -> dict:
        """The saved `state()` of a batch (any task's record); `check(state)`: what is wrong with its
        content (the task's fields, their lengths), or None."""
        path = self._path(attack, batch)
        return _checked(path, load_tensors(path, _RESTART), check)


def _checked(path: Path, content, check: Callable[[Any], str | None] | None):
    """`content` read from `path` when `check` finds nothing wrong with it. A file torch reads that holds
    something else (a hand edit, another program's file) is the damaged file's one line, not a
    traceback deep in the report."""
    problem = check(content) if check is not None else None
    if problem:
        from augment.errors import MatPlusError

        raise MatPlusError(f"{path}: unreadable ({problem}); {_RESTART}")
    return content


def _kind(value) -> str:
    return type(value).__name__


def _rows(value) -> int:
    """Rows of a tensor (its first dimension), a list of tensors (theirs, summed) or a list."""
    if isinstance(value, torch.Tensor):
        return value.shape[0]
    return sum(item.shape[0] for item in value) if value and isinstance(value[0], torch.Tensor) else len(value)


def tensors_problem(value, rows: int | None = None, dims: int | None = None, width: int | None = None) -> str | None:
    """What is wrong with `value` as a tensor or a list of tensors with `dims` dimensions, `rows` rows
    in all and `width` columns (each checked when given), or None."""
    parts = [value] if isinstance(value, torch.Tensor) else value
    if not isinstance(parts, list) or not all(isinstance(part, torch.Tensor) for part in parts):
        return f"a {_kind(value)}, not tensors"
    for part in parts:
        if part.dim() == 0 or (dims is not None and part.dim() != dims):
            return f"a tensor of shape {tuple(part.shape)}, not {dims or 'one or more'} dimensions"
        if width is not None and (part.dim() < 2 or part.shape[1] != width):
            return f"a tensor of shape {tuple(part.shape)}, not {width} columns"
    if rows is not None and _rows(value) != rows:
        return f"{_rows(value)} rows, not {rows}"
    return None


def content_problem(content, fields: dict[str, tuple[type | tuple[type, ...], int | None]],
                    tensors: dict[str, dict] | None = None) -> str | None:
    """What is wrong with a progress file's `content` as a dict holding `fields` ({key: (type, rows or
    None)}; a list's length, a tensor's first dimension) and `tensors` ({key: `tensors_problem`'s
    keyword arguments}), or None: one check per file kind, before any number is read from it."""
    if not isinstance(content, dict):
        return f"holds a {_kind(content)}, not a dict"
    missing = [key for key in (*fields, *(tensors or {})) if key not in content]
    if missing:
        return f"no {', '.join(missing)}"
    for key, (kind, rows) in fields.items():
        value = content[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
            return f"{key} is a {_kind(value)}"
        if rows is not None and _rows(value) != rows:
            return f"{key} has {_rows(value)} rows, not {rows}"
    for key, expected in (tensors or {}).items():
        problem = tensors_problem(content[key], **expected)
        if problem:
            return f"{key} is {problem}"
    return None


# the batch store's top-level settings that one `train eval` flag sets (the rest: models, data, attacks)
_SETTINGS_FLAGS = {"seed": "--seed", "precision": "--precision", "caption_preprocess": "--caption-preprocess",
                   "batch_size": "--batch-size", "captions_per_image": "--captions-per-image", "split": "--split",
                   "limit": "--limit", "rerank_k": "--rerank-k", "checker": "--truth-checker", "device": "--device"}


def _earlier_settings(found: str | None, settings: dict) -> int | None:
    """The format of a settings.json of an earlier format (written before `FORMAT_KEY` was recorded: 0, or with a
    lower one) that holds exactly `settings`; None for any other."""
    try:
        before = json.loads(found) if found is not None else None
    except json.JSONDecodeError:
        return None
    if not isinstance(before, dict):
        return None
    earlier = before.pop(FORMAT_KEY, 0)  # 0: written before the key
    same = json.dumps(before, sort_keys=True) == json.dumps(settings, sort_keys=True, default=str)
    return earlier if isinstance(earlier, int) and earlier < PROGRESS_FORMAT and same else None


def _substitute_sources(params) -> list[dict]:
    """The params of the substitute sources (a dict with a "source") within one attack's params."""
    if not isinstance(params, dict):
        return []
    if isinstance(params.get("source"), str):
        return [params]
    return [found for value in params.values() for found in _substitute_sources(value)]


def _word_search_changed(found: str | None, settings: dict) -> list[str]:
    """The attacks of an earlier format's settings.json holding exactly `settings` whose word search this
    version does otherwise (format 4's note above): every word attack of formats 0-2, the reference reading
    without --reference-bugs of format 3; a text part of budget 0 (source none) searches nothing."""
    earlier = _earlier_settings(found, settings)
    attacks = settings.get("attacks")
    if earlier is None or not isinstance(attacks, dict):
        return []

    def changed(source: dict) -> bool:
        if source["source"] == "none":
            return False
        return earlier < 3 or (source.get("reading") == "reference" and source.get("reference_bugs") is not True)

    return sorted(name for name, params in attacks.items() if any(map(changed, _substitute_sources(params))))


def _same_before_format(found: str | None, settings: dict) -> bool:
    """Whether a settings.json of an earlier format holds exactly `settings` and its word attacks searched words
    as this version does: its batches resume (this version computes them alike; only what other settings record
    changed)."""
    return _earlier_settings(found, settings) is not None and not _word_search_changed(found, settings)


# what a differing setting without a flag is, in the refusal's words
_MOVED = ("or moved: batches kept before 2026-12-07 recorded the image files by absolute path, so they resume only "
          "where they were made")
_SETTINGS_WORDS = {
    "image_files": "an image file replaced or edited, or another --image-root",
    "images": f"an image file replaced or edited, another --image-root, {_MOVED}",
    "data.files": "other images, boxes or expressions: an image file replaced or edited, or another --image-root",
    "data.fingerprint": f"other images, boxes or expressions: an image file replaced or edited, another --image-root, {_MOVED}",
}


def _keys_of(settings: dict) -> set:
    """The keys of settings, and of a nested object's its own as `key.sub` (one level, as the refusal names them)."""
    return set(settings) | {f"{key}.{sub}" for key, value in settings.items() if isinstance(value, dict) for sub in value}


def _recorded_keys(found: str | None) -> set:
    """`_keys_of` a kept settings.json (none where it is missing or unreadable)."""
    try:
        before = json.loads(found) if found else None
    except json.JSONDecodeError:
        return set()
    return _keys_of(before) if isinstance(before, dict) else set()


def _tag(settings: dict) -> str:
    """The settings.json text a store of `settings` is tagged with (this version's format)."""
    return json.dumps({**settings, FORMAT_KEY: PROGRESS_FORMAT}, sort_keys=True, default=str)


def _differing_keys(before: dict, after: dict) -> list[tuple[str, str | None]]:
    """The settings whose values differ between two settings.json documents (the format aside), in key order:
    (key, None), or a nested object's (key, sub) one level in."""
    differ: list[tuple[str, str | None]] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if key == FORMAT_KEY or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            differ += [(key, sub) for sub in sorted(set(old) | set(new)) if old.get(sub) != new.get(sub)]
        else:
            differ.append((key, None))
    return differ


def _settings_differences(found: str | None, wanted: str) -> str | None:
    """The settings keys (one level into nested ones, as `options.eps`, an attack option with
    its flag: `options.eps (--attack-eps)`) whose values differ; None when `found` (the kept
    settings.json) is missing or unreadable."""
    from train.attacks.settings import OPTION_FLAGS

    try:
        before = json.loads(found) if found is not None else None
    except json.JSONDecodeError:
        before = None
    if not isinstance(before, dict):
        return None
    after = json.loads(wanted)
    differ = []
    for key, sub in _differing_keys(before, after):  # the format is said in words by the caller
        if sub is None:
            said = _SETTINGS_FLAGS.get(key) or _SETTINGS_WORDS.get(key)
        elif key == "options" and sub in _SETTINGS_FLAGS and sub in before | after:
            continue  # the attacks' seed is train eval's --seed, said once by the top-level key
        else:
            said = (OPTION_FLAGS.get(sub) if key == "options" else None) or _SETTINGS_WORDS.get(f"{key}.{sub}")
        differ.append(".".join(filter(None, (key, sub))) + (f" ({said})" if said else ""))
    return "differ: " + ", ".join(differ)
