"""What every task's evaluation shares (retrieval `train.evaluate`, captioning
`train.evaluate_captioning`, grounding `train.evaluate_grounding`): the gallery of evaluated
images and their captions, decoding it batch by batch in DataLoader workers (skipping what a
resumed evaluation already has), the settings a resumed evaluation must match, attacks built by
name and reseeded per batch, their options as JSON, handing adversarial images to a transfer
victim (resized to its resolution), and the pool writers of `--save-adv`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from train.attacks import Attack, build_attack
from train.attacks.base import attack_parts
from train.attacks.protocols import CLIP_FAMILIES

if TYPE_CHECKING:
    from augment.loading import DecodingWorkers
    from train.eval_store import BatchStore


# what an absent --split says when the source names no splits (an open_clip TSV: every row "train")
UNLABELLED_HINT = "--source-split {split} labels every row {split}, or --split all evaluates them all"


def emptied_in_words(caption_preprocess: str | None, protocol_default: str | None = None) -> str:
    """How a one-line error says a text is empty: as given (no preprocessing), or after the preprocessing
    named by its flag or as the protocol's default (a user who never passed --caption-preprocess should
    learn where it came from and how to leave it)."""
    if caption_preprocess in (None, "none"):
        return "empty"
    if protocol_default is None:
        return f"empty after --caption-preprocess {caption_preprocess}"
    return (f"empty after {caption_preprocess}, --protocol {protocol_default}'s caption preprocessing "
            "(--caption-preprocess none keeps captions as given)")


@dataclass
class Gallery:
    """The evaluated images (source rows) and their captions, flattened."""

    rows: Any  # datasets.Dataset of the selected split
    captions: list[str]
    image_of_text: torch.Tensor  # [T]
    caption_index: list[int]  # each caption's index among its image's captions

    @classmethod
    def from_source(cls, source_dataset, split: str | None = "test", limit: int | None = None,
                    captions_per_image: int | None = None, caption_preprocess: str | None = None,
                    protocol_default: str | None = None) -> "Gallery":
        """`protocol_default`: the protocol whose default `caption_preprocess` is (the user gave none)."""
        from augment.errors import SourceError
        from augment.schema import is_blank
        from augment.sources import select_split
        from augment.words import preprocess_caption

        rows = select_split(source_dataset, split, UNLABELLED_HINT.format(split=split))
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        captions, image_of_text, caption_index = [], [], []
        for image, image_captions in enumerate(rows["captions"]):
            kept = image_captions if captions_per_image is None else image_captions[:captions_per_image]
            cleaned = [preprocess_caption(c, caption_preprocess) for c in kept]
            for index, (given, caption) in enumerate(zip(kept, cleaned)):
                if is_blank(caption):  # e.g. "!!!" under pre_caption: stop before any attack runs
                    raise SourceError(f"image {rows[image]['image_id']!r}, caption {index} ({given!r}): "
                                      f"{emptied_in_words(caption_preprocess, protocol_default)}; fix or drop that caption")
            captions += cleaned
            image_of_text += [image] * len(kept)
            caption_index += list(range(len(kept)))
        return cls(rows, captions, torch.tensor(image_of_text, dtype=torch.long), caption_index)

    def __len__(self) -> int:
        return len(self.rows)

    def batch_count(self, batch_size: int) -> int:
        return -(-len(self.rows) // batch_size)

    def batches(self, batch_size: int, rows: bool = True):
        """(first image, source rows, caption ids) per batch of images with all their captions
        (`rows=False`: None for the rows, which `gallery_pixels` decodes in DataLoader workers)."""
        for start in range(0, len(self.rows), batch_size):
            stop = min(start + batch_size, len(self.rows))
            text_ids = torch.nonzero((self.image_of_text >= start) & (self.image_of_text < stop)).flatten()
            yield start, [self.rows[i] for i in range(start, stop)] if rows else None, text_ids


def model_id(model) -> dict:
    return model.describe()


# loads of a run's checkpoint folder during which its trainer saved a new one, tried again before giving up
CHECKPOINT_TRIES = 3


def _checkpoint_folder_stamp(folder: Path) -> tuple | None:
    """Which folder is at `folder` now (a trainer's save swaps in a new one: another inode, another change
    time) and its training state file's identity; None when there is no folder."""
    from augment.source_cache import file_identity
    from train.checkpoint import STATE_DIR, STATE_FILE

    try:
        stat = folder.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_ctime_ns, file_identity(folder / STATE_DIR / STATE_FILE)


def _checkpoint_step(folder: Path) -> int | None:
    """The training step of the weights in a run's checkpoint folder: RUN/ckpt's `train_state/state.json`, or
    RUN/best's `validation.json` (the validator's line of that step: best/ holds no train_state), else None."""
    from augment.json_records import DamagedRecord, read_json_object
    from train.checkpoint import STATE_DIR, STATE_FILE

    for record in (folder / STATE_DIR / STATE_FILE, folder / "validation.json"):
        try:
            step = read_json_object(record).get("step")
        except FileNotFoundError:
            continue
        except (DamagedRecord, OSError):
            return None
        return step if isinstance(step, int) and not isinstance(step, bool) else None
    return None


def record_checkpoint_steps(report: dict, victim_step: int | None, attacker_step: int | None = None,
                           victim_name: str | None = None, attacker_name: str | None = None) -> None:
    """eval.json's `settings.checkpoint_step` (and `attacker_checkpoint_step`): the training step of the run
    checkpoint evaluated (`load_evaluated`), where the model was one; and `checkpoint_path` (and
    `attacker_checkpoint_path`): the absolute path of the folder a model named by a folder was read from,
    which `analysis compare` tells models apart by (the name is the path as given, relative or not)."""
    if victim_step is not None:
        report["settings"]["checkpoint_step"] = victim_step
    if attacker_step is not None:
        report["settings"]["attacker_checkpoint_step"] = attacker_step
    for key, name in (("checkpoint_path", victim_name), ("attacker_checkpoint_path", attacker_name)):
        if (path := model_folder(name)) is not None:
            report["settings"][key] = path


def model_folder(name: str | None) -> str | None:
    """The absolute path of the local folder the model `name` was read from; None for a Hub id, an open_clip
    name or a tiny twin's name (no folder of that name here)."""
    from models.base import bare_name

    if not name:
        return None
    folder = Path(bare_name(name)).expanduser()
    return str(folder.resolve()) if folder.is_dir() else None


def load_evaluated(name: str | None, load: Callable[[], Any]) -> tuple[Any, int | None]:
    """`load()`, the model named `name`, and the training step of the checkpoint it read when `name` is a
    run's checkpoint folder (`RUN/ckpt`, `RUN/best`: its `train_state/state.json`), else None. A trainer
    still running saves by swapping a new folder in (`augment.atomic.swap_folder_into_place`): the model is
    loaded again until the folder was the same one before and after, so that the step recorded is that of
    the weights evaluated (an evaluation recorded the folder's name only, whose weights a later save
    replaced)."""
    from augment.errors import MatPlusError
    from models.base import bare_name

    if name is None:
        return load(), None
    from augment.atomic import wait_out_a_swap

    folder = Path(bare_name(name)).expanduser()
    for _ in range(CHECKPOINT_TRIES):
        wait_out_a_swap(folder)  # met between the save's two renames: RUN/ckpt missing, RUN/.ckpt-old aside
        before = _checkpoint_folder_stamp(folder)
        model = load()
        step = _checkpoint_step(folder) if before is not None else None
        if _checkpoint_folder_stamp(folder) == before:
            return model, step
        del model
    raise MatPlusError(f"{folder}: its training run saved a new checkpoint there each of {CHECKPOINT_TRIES} times it "
                       "was loaded; evaluate a copy of it, or wait until the run is done")


def resume_settings(victim, attacker, gallery: "Gallery", resumable: bool, split, limit, captions_per_image,
                    batch_size: int, seed: int, built: dict, source_meta: dict | None = None, **task_settings) -> dict:
    """The settings a resumed evaluation of the attacks `built` must have been made with
    (`train.eval_store.BatchStore`), retrieval's and captioning's shared ones first, then
    `task_settings` in their order. `source_meta`: how the source was read (its `source`, whose folder
    the image paths are recorded relative to)."""
    from augment.scoring.pool_scores import source_root
    from train.eval_store import data_identity, substitute_model_identity

    root = source_root((source_meta or {}).get("source"))

    return {
        "victim": model_id(victim), "attacker": model_id(attacker), "split": split, "limit": limit,
        # what the names do not say, for a resumed evaluation only: another source at the same path, a
        # checkpoint or masked LM retrained in place (a pass over the weights, not paid without progress to resume)
        **(data_identity(gallery.rows, victim, attacker, root) if resumable else {}),
        **(substitute_model_identity(built) if resumable else {}),
        "captions_per_image": captions_per_image, "batch_size": batch_size, "seed": seed,
        "device": torch.device(victim.device).type,  # a batch's numbers depend on the kernels that ran it
        "attacks": {name: attack.params() for name, attack in built.items()}, **task_settings,
    }


def _decoded_row(preprocess: Callable[[Any], torch.Tensor], row: dict) -> tuple[torch.Tensor, dict]:
    """(pixels, the row without its image): what a `gallery_pixels` worker hands back for one row."""
    return preprocess(row["image"]), {k: v for k, v in row.items() if k != "image"}


def gallery_decoding(gallery: "Gallery", views: dict[str, Callable[[Any], torch.Tensor]],
                     workers: int) -> "DecodingWorkers":
    """The DataLoader workers (`workers`; 0: none) that decode `gallery`'s images for every pass of one
    evaluation, each pass with one of the named `views` (a model's eval preprocessing): started once,
    not once per attack (`augment.loading.DecodingWorkers`); close it when the evaluation ends."""
    import functools

    from augment.loading import DecodingWorkers

    # module-level functions bound with partial: a local function cannot be pickled for workers
    # started with spawn or forkserver (macOS's default start method)
    return DecodingWorkers(gallery.rows, {name: functools.partial(_decoded_row, preprocess)
                                          for name, preprocess in views.items()}, workers)


def gallery_pixels(gallery: "Gallery", batch_size: int, decoding: "DecodingWorkers", view: str,
                   indices: Sequence[int]):
    """(pixels preprocessed by `view`, rows without their image) of the gallery batches `indices`, in
    that order, decoded by `decoding`'s workers (`gallery_decoding`), so batch i+1 is read while
    batch i is attacked, and a bad image still fails with its own one-line error."""
    batches = [range(i * batch_size, min((i + 1) * batch_size, len(gallery))) for i in indices]
    for batch in decoding.passes(view, batches):
        yield torch.stack([pixels for pixels, _ in batch]), [row for _, row in batch]


def resumable_batches(gallery: "Gallery", batch_size: int, decoding: "DecodingWorkers", view: str,
                      store: "BatchStore | None", writers: dict, name: str):
    """(batch index, first image, text ids, (pixels, rows) or None) for every gallery batch in order: None
    where a resumed evaluation already has attack `name`'s results for the batch (and its adversarial pool
    shard, when one is written); only the other batches are decoded (`gallery_pixels`)."""
    count = gallery.batch_count(batch_size)
    done = [store is not None and store.has(name, b) and (name not in writers or writers[name].has_shard(b))
            for b in range(count)]
    decoded = gallery_pixels(gallery, batch_size, decoding, view, [b for b in range(count) if not done[b]])
    for batch_index, (start, _, text_ids) in enumerate(gallery.batches(batch_size, rows=False)):
        yield batch_index, start, text_ids, None if done[batch_index] else next(decoded)


def evaluation_bar(total: int, desc: str, progress: bool):
    """An attack's progress bar over the evaluated images (`attack_bars`). It stays on the screen where it
    is the only bar (`train eval`) and is cleared when it ran below another (in-training validation, under
    the training bar): tqdm's leave=None."""
    from augment.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="img", disable=not progress, leave=None)


def attack_bars(attacks: dict, images: int, desc: str, progress: bool):
    """(name, attack, bar) for each of `attacks` in turn: a bar of its own over the `images` it evaluates
    (`evaluating sga (3/6)`), closed before the next. One bar over images x attacks averaged its rate over
    attacks of very different costs (clean in seconds, SGA in hours at scale): its time left was several
    times too short while a slow attack began."""
    for number, (name, attack) in enumerate(attacks.items(), 1):
        label = f"{desc} {name}" + (f" ({number}/{len(attacks)})" if len(attacks) > 1 else "")
        bar = evaluation_bar(images, label, progress)
        try:
            yield name, attack, bar
        finally:
            bar.close()


def advance_resumed(bar, n: int) -> None:
    """Move an evaluation bar past `n` images a resumed evaluation kept, without counting them in its rate
    and time left: read back in no time, they made a plain `update` show thousands of images a second and
    a remaining time several times too short."""
    if getattr(bar, "disable", True):
        return
    bar.n += n
    bar.initial += n  # the rate over the whole run counts from `initial`
    bar.last_print_n = bar.n  # the smoothed rate reads the images since the last print over its time
    bar.refresh()


def to_victim_resolution(images: torch.Tensor, size: int) -> torch.Tensor:
    """The project's transfer hand-over: float pixels, resized (antialiased bicubic, clamped) only when
    the victim's resolution differs."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def sga_scripts_hand_over(images: torch.Tensor, size: int, clip_victim: bool) -> torch.Tensor:
    """Adversarial images as the SGA code's transfer scripts hand them to the target model (their
    `t_test_transform`; `--protocol sga` in transfer mode). To a CLIP: the tensor's
    Resize(size, bicubic) + CenterCrop(size), which under the torchvision the SGA code pins (0.15)
    neither antialiases nor clamps a float tensor. To ALBEF/TCL (and any other family): ToPILImage,
    which floors every pixel to 8 bits (up to 1/255 lost, even at the same size), PIL's
    Resize((size, size), bicubic), ToTensor."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if clip_victim:
        return TF.center_crop(TF.resize(images, size, InterpolationMode.BICUBIC, antialias=False), [size, size])
    handed = [TF.to_tensor(TF.resize(TF.to_pil_image(image.detach().cpu()), [size, size], InterpolationMode.BICUBIC))
              for image in images]
    return torch.stack(handed).to(images.device)


# how a transfer evaluation hands the attacker's adversarial images to the victim, by
# `ProtocolChoices.transfer_hand_over`: (images, victim) -> the victim's pixels
HAND_OVERS: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {
    "project": lambda images, victim: to_victim_resolution(images, victim.image_size),
    "sga-scripts": lambda images, victim: sga_scripts_hand_over(
        images, victim.image_size, clip_victim=getattr(victim, "family", None) in CLIP_FAMILIES),
}


MLM_ATTACKS = ("bert-attack", "sep", "co-attack", "sga")  # retrieval attacks that draw substitutes from a masked LM


def evaluated_in_eval_mode(*parameters: str) -> Callable[[Callable], Callable]:
    """Decorator of an evaluation: its model arguments named `parameters` (None or a repeat skipped) in eval
    mode while it runs, each of their modules' modes restored after, also when it raises. A model a
    caller just trained from Python is in training mode: retrieval's and captioning's evaluations encoded,
    attacked and captioned it with its dropout on (other numbers than `train eval`'s of the same weights),
    and grounding's left it in eval mode (audit BF)."""
    import functools
    import inspect

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def evaluation(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            models = [bound.arguments.get(name) for name in parameters]
            modes = {id(module): (module, module.training) for model in models if isinstance(model, torch.nn.Module)
                     for module in model.modules()}
            for model in models:
                if callable(getattr(model, "eval", None)):
                    model.eval()
            try:
                return function(*args, **kwargs)
            finally:
                for module, mode in modes.values():
                    module.training = mode

        return evaluation

    return decorate


def build_attacks(names: Sequence[str | Attack], attacker, options: dict, build: Callable | None = None,
                  mlm_attacks: Sequence[str] = MLM_ATTACKS) -> dict[str, Attack]:
    """Attacks by name (built on the attacker, sharing one masked LM) or ready-made ones.

    Another task's attacks: `build(name, attacker, **options)` (default: `build_attack`) and the names
    of those that use a masked LM. The LM meant by "default" is `train.config.default_mlm_of(attacker)`
    (tiny-mlm for a tiny twin)."""
    build = build or build_attack
    options = {k: v for k, v in options.items() if v is not None}  # unset: each attack's own default
    # a budget of 0 changes no word: the text attacks read no masked LM (none loaded, `NoSubstitutes`)
    needs_mlm = any(n in mlm_attacks for n in names if isinstance(n, str)) and options.get("budget") != 0
    if needs_mlm and options.get("candidates", "mlm") == "mlm" and isinstance(options.get("mlm", "default"), str):
        from augment.registry import load_mlm
        from train.config import default_mlm_of

        name = options.get("mlm") or "default"
        if name == "default":
            name = default_mlm_of(attacker)
        model, tokenizer = load_mlm(name, device=attacker.device)
        options["mlm"] = (model, tokenizer, name)
    attacks: dict[str, Attack] = {}
    for entry in names:
        attack = build(entry, attacker, **options) if isinstance(entry, str) else entry
        key = entry if isinstance(entry, str) else _ready_made_name(attack)
        if key in attacks:
            raise ValueError(f"attack {key!r} listed twice" + ("" if isinstance(entry, str) else
                             " (two ready-made attacks of one name: set `name` on one; it keys the report row)"))
        attacks[key] = attack
    return attacks


def _ready_made_name(attack) -> str:
    """A ready-made attack's `name`, which keys its report row and names its progress folder: an
    empty one gave a nameless row and wrote its batches over the clean ones' folder, `clean` dropped
    the attack unrun, and a `/` or `..` wrote its batches elsewhere."""
    name = getattr(attack, "name", "")
    kind = type(attack).__name__
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"attack {kind} has no name: set its class's `name` (it keys the report and the progress "
                         "folder)")
    if name == "clean" and getattr(attack, "modality", None) != "none":
        raise ValueError(f"attack {kind} is named 'clean', the unattacked row every report has: give it a name of "
                         "its own")
    if name != name.strip() or name.startswith(".") or any(c in name for c in '/\\:*?"<>|'):
        raise ValueError(f"attack {kind}'s name {name!r} is no plain file name (it names its progress folder): "
                         "use letters, digits, '-' and '_'")
    return name


def plain_attack_options(options: dict) -> dict:
    """Attack options as JSON (settings, resume tags): a loaded masked LM `(model, tokenizer[, name])`
    by its name (None when the tuple has none)."""
    plain = dict(options)
    if isinstance(plain.get("mlm"), tuple):
        plain["mlm"] = plain["mlm"][2] if len(plain["mlm"]) > 2 else None
    return plain


def reseed_attack(attack, seed: int) -> None:
    """Seed the attack's random generators (its own and its parts') for one batch."""
    for part in attack_parts(attack):
        generator = getattr(part, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
    torch.manual_seed(seed)


# the rows a retrieval attack's pool holds, by what the attack perturbs
ROW_MODALITY = {"image": "image", "text": "text", "multimodal": "pair"}


def adversarial_pool_writers(save_adv, attacks: dict[str, Attack], source_dataset, attacker, split, limit, seed, batch_size,
                             progress_dir: str | Path | None = None, items: int | None = None,
                             source_meta: dict | None = None,
                             row_modality: Callable[[Attack], str] = lambda attack: ROW_MODALITY[attack.modality]) -> dict:
    """One pool writer per attack under `save_adv`.

    Each pool.json records what `augment generate`'s does about its data: its rows' `modality`
    (`row_modality(attack)`), `source_items` (`items`, the images evaluated) and `source_meta`,
    how the source was read (`source`, `image_root`, `source_split`, `source_format`, a CSV/TSV's
    column options: `augment.commands.common.source_meta`), so that
    `augment score POOL` finds the source by itself and a pushed pool's card names it.

    Without `progress_dir` (an API call that cannot resume) each pool is written anew. With it,
    a resumed evaluation keeps its pools' shards; a pool there that another evaluation (another
    OUT, or none recorded) made with other settings is refused, not replaced: its own report
    points at it. This evaluation's own pool of other settings (an OUT started again with
    --restart) is replaced. The pools record the whole source's fingerprint, as `augment
    generate`'s do (not the evaluated split's), so `augment score` and `train mat+` take them
    with that source."""
    if save_adv is None:
        return {}
    from augment.errors import MatPlusError, PoolIdentityError
    from augment.pool import PoolWriter, read_pool_meta
    from augment.sources import source_fingerprint

    fingerprint = source_fingerprint(source_dataset)
    attacker_id = model_id(attacker)
    writers = {}
    for name, attack in attacks.items():
        meta = {
            # `model` is a name, as every pool's (cards link it); the attacker's description beside it
            "method": "adversarial", "name": f"adversarial-{name}", "model": str(attacker_id.get("name")),
            "attacker": attacker_id,
            "params": {"attack": name, **attack.params()}, "seed": seed, "source_fingerprint": fingerprint,
            "split": split, "limit": limit, "n": 1, "shard_size": batch_size,
            "description": f"adversarial examples of the {name} attack ({attack.modality}); see provenance per row",
            "modality": row_modality(attack), **({"source_items": items} if items is not None else {}),
            **(source_meta or {}),
        }
        if progress_dir is not None:  # the evaluation (its OUT) that writes the pool: not an identity key
            meta["evaluation"] = str(Path(progress_dir).resolve().parent)
        folder = Path(save_adv) / name
        try:
            writers[name] = PoolWriter(folder, meta, overwrite=progress_dir is None)
        except PoolIdentityError as exc:  # a pool of other settings there (any other PoolError propagates)
            owner = read_pool_meta(folder).get("evaluation")
            if owner is None or owner != meta.get("evaluation"):
                made_by = f"the evaluation in {owner}" if owner else "another evaluation"
                raise MatPlusError(f"--save-adv: {folder} holds {made_by}'s {name} pool, made with other settings "
                                   f"({', '.join(exc.changed)}): choose another --save-adv, or delete that folder") from None
            writers[name] = PoolWriter(folder, meta, overwrite=True)
    return writers
