"""Tiny, offline twins of every model role: same classes as the real models, random weights.

Each tiny model is built from a fixed config with a fixed seed, so one name always gives the
same weights, and needs no download. They exist so that every code path (generation, scoring,
training, checkpoint loading) runs end to end in tests and on a laptop.

| name               | what it is                                                      |
|--------------------|-----------------------------------------------------------------|
| `tiny-clip`        | open_clip `CLIP`, 64 px, ViT 2x128, text 2x128, context 32 (~7.3 M) |
| `tiny-siglip`      | the same open_clip `CLIP` with SigLIP's logit bias (-10) and scale (10) |
| `tiny-blip`        | transformers `BlipForImageTextRetrieval`, 64 px, 2+2 layers of width 64 (models/blip.py) |
| `tiny-hf-clip`     | transformers `CLIPModel`, 64 px, 2+2 layers of width 32 (models/hf_clip.py) |
| `tiny-sd`          | diffusers `StableDiffusionPipeline` (UNet/VAE/CLIP text of diffusers' tests) |
| `tiny-captioner`   | transformers `BlipForConditionalGeneration` + `BlipProcessor`  |
| `tiny-paraphraser` | transformers `T5ForConditionalGeneration` (seq2seq)            |
| `tiny-mlm`         | transformers `BertForMaskedLM`                                  |

The last three share one word-level `BertTokenizer` (`vocab.txt`: BERT special tokens, then
single characters, then a sorted word list = the sample world's words + common English words).

Models are written with the libraries' own `save_pretrained` (open_clip: `local-dir:` layout)
into `<dir>/<name>/`; `tiny_dir(name)` keeps them in a cache (env `MATPLUS_TINY_DIR`, default
`$XDG_CACHE_HOME/mat-plus/tiny`, `~/.cache/mat-plus/tiny` without it) and the registry always loads them back FROM that folder, so loading
from a local path is exercised whenever a tiny model is used. A `tiny.json` manifest in each
folder records a fingerprint of the recipe (configs, vocabulary, seed); a folder whose
fingerprint differs (e.g. the sample world's vocabulary grew) is rebuilt.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterable

from augment.atomic import readable_as_umask, staging_path, swap_folder_into_place
from augment.progress import quiet_progress_bars

log = logging.getLogger(__name__)

# bump when a builder changes in a way the configs below do not show (forces a rebuild)
RECIPE_VERSION = 1

TINY_CLIP = "tiny-clip"
TINY_SD = "tiny-sd"
TINY_CAPTIONER = "tiny-captioner"
TINY_PARAPHRASER = "tiny-paraphraser"
TINY_MLM = "tiny-mlm"
TINY_SIGLIP = "tiny-siglip"
# vision-language twins built by their model family's module (`models/`): name -> module. The
# module has `tiny_config(name) -> dict` (what the fingerprint hashes) and `build_tiny(name, dir)`;
# looked up by name, so this module imports no model family (no import cycle).
FAMILY_TWINS: dict[str, str] = {
    TINY_CLIP: "models.open_clip_family",
    TINY_SIGLIP: "models.open_clip_family",
    "tiny-blip": "models.blip",
    "tiny-hf-clip": "models.hf_clip",
    "tiny-albef": "models.albef",
}
TINY_NAMES = (TINY_SD, TINY_CAPTIONER, TINY_PARAPHRASER, TINY_MLM, *FAMILY_TWINS)
# the registry role each tiny model stands in for ("vlm": a vision-language model of `models/`)
TINY_ROLES = {
    **{name: "vlm" for name in FAMILY_TWINS},
    TINY_CLIP: "clip",
    TINY_SIGLIP: "clip",
    TINY_SD: "sd",
    TINY_CAPTIONER: "captioner",
    TINY_PARAPHRASER: "paraphraser",
    TINY_MLM: "mlm",
}

MANIFEST_NAME = "tiny.json"
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

# OpenAI CLIP pixel statistics (the same numbers as open_clip.constants.OPENAI_DATASET_MEAN/STD)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# ---------------------------------------------------------------------------------------------
# Configs. Plain dicts so they are part of the fingerprint; sizes are the smallest that still
# exercise every real code path (cross-attention, VAE scaling, beam search...).
# ---------------------------------------------------------------------------------------------

SD_UNET_CONFIG = {
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
}
# two blocks -> vae_scale_factor 2: 64x64 pixels <-> 32x32 latents = the UNet's sample_size
SD_VAE_CONFIG = {
    "block_out_channels": [32, 64],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
    "sample_size": 64,
}
SD_TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "projection_dim": 32,
    # full CLIP BPE vocabulary, so the tokenizer is the real one (ids equal open_clip's)
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "layer_norm_eps": 1e-5,
}
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
SD_TOKENIZER_MAX_LENGTH = 77

WORD_MAX_LENGTH = 64  # max_position_embeddings of the word-level models and their tokenizer

CAPTIONER_VISION_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 16,
    "projection_dim": 32,
    # transformers' BlipVisionConfig defaults to 1e-10 (real weights are loaded over it): at that
    # scale LayerNorm erases the image and the twin's captions cannot depend on it
    "initializer_range": 0.02,
}
CAPTIONER_TEXT_CONFIG = {
    "hidden_size": 32,
    "encoder_hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": WORD_MAX_LENGTH,
    "projection_dim": 32,
}
PARAPHRASER_CONFIG = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "dropout_rate": 0.0,
    "feed_forward_proj": "relu",
}
MLM_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": WORD_MAX_LENGTH,
}

# ---------------------------------------------------------------------------------------------
# Word-level vocabulary
# ---------------------------------------------------------------------------------------------

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)

# single characters, so punctuation and digits never become [UNK]
_SINGLE_CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,;:!?'\"-()/&%+=*#@$")

# Common English words (captions, paraphrases, scene descriptions). Used together with the sample
# world's own words.
_COMMON_WORDS = """
a an the this that these those some any each every all both few many much more most other
another such no not only same one two three four five six seven eight nine ten first second
third last next several
is are was were be been being am has have had do does did can could will would should may might
must shall
i you he she it we they me him her us them my your his its our their there here where when what
which who whom whose why how
and or but so if then than as because while with without within of in on at to from by for
about into onto over under above below near far behind beside besides between among around
through across along against toward towards up down out off inside outside upon after before
during next
left right top bottom middle centre center side corner edge front back upper lower
small large big little tiny huge tall short long wide narrow thin thick round flat bright dark
light heavy empty full open closed new old young high low
red green blue yellow orange purple pink brown black white grey gray gold silver cyan magenta
violet colour color coloured colored
circle square triangle star hexagon rectangle oval diamond pentagon cross heart ring line dot
shape shapes object objects figure figures pattern background image picture photo photograph
scene view drawing painting
man woman men women person people boy girl child children baby player group team family
dog dogs cat cats horse bird birds cow sheep animal animals fish bear elephant giraffe zebra
car cars bus truck train bike bicycle motorcycle boat plane airplane street road sidewalk
building house room kitchen table chair bed couch sofa window door wall floor sky cloud clouds
water sea ocean beach sand grass tree trees field park mountain hill snow city sign light
food pizza plate bowl cup glass bottle cake sandwich fruit banana apple orange
ball bat racket kite frisbee umbrella bag shirt hat phone computer laptop screen book clock vase
sitting standing walking running riding holding looking playing eating drinking flying lying
wearing carrying watching waiting parked filled covered made shown placed drawn painted
appears appear seems seem shows show contains contain has having sits stands lies rests
next_to close together alone each other pair pairs row rows set lot lots
very quite rather almost just also too again still even really
yes no please thank thanks
""".split()


def _split_words(words: Iterable[str]) -> list[str]:
    """Lower-case alphanumeric pieces of `words` (BERT's pre-tokenizer splits on the rest anyway)."""
    pieces: set[str] = set()
    for word in words:
        pieces.update(p for p in re.split(r"[^0-9a-z]+", str(word).lower()) if p)
    return sorted(pieces)


def sample_world_words() -> list[str]:
    """The sample world's caption words."""
    from augment.world.captions import world_vocabulary

    return list(world_vocabulary())


def word_vocabulary() -> list[str]:
    """Full token list of the tiny word-level tokenizer; position = token id.

    Deterministic: special tokens, then single characters, then the sorted union of the sample
    world's words and the common words (no '##' sub-word pieces: an unknown word becomes [UNK]).
    """
    singles = list(dict.fromkeys(_SINGLE_CHARACTERS))
    words = [w for w in _split_words(_COMMON_WORDS + sample_world_words()) if w not in singles]
    return list(BERT_SPECIAL_TOKENS) + singles + words


def write_word_vocab(out_dir: Path, vocabulary: list[str] | None = None) -> Path:
    path = Path(out_dir) / "vocab.txt"
    path.write_text("\n".join(vocabulary or word_vocabulary()) + "\n", encoding="utf-8")
    return path


def build_word_tokenizer(
    out_dir: Path,
    vocabulary: list[str] | None = None,
    model_input_names: list[str] | None = None,
):
    """BertTokenizer over the word vocabulary, written into and loaded back from `out_dir`.

    `model_input_names`: e.g. ["input_ids", "attention_mask"] for models that take no
    token_type_ids (T5's generate rejects them); saved with the tokenizer.

    Loaded with `from_pretrained(dir)` after writing vocab.txt: in transformers 5,
    `BertTokenizerFast(vocab_file=...)` silently kept a 5-token default vocabulary.
    """
    from transformers import BertTokenizer

    vocabulary = vocabulary or word_vocabulary()
    write_word_vocab(out_dir, vocabulary)
    extra = {"model_input_names": list(model_input_names)} if model_input_names else {}
    tokenizer = BertTokenizer.from_pretrained(
        str(out_dir), do_lower_case=True, model_max_length=WORD_MAX_LENGTH, **extra
    )
    ids = tokenizer.convert_tokens_to_ids(vocabulary)
    if ids != list(range(len(vocabulary))) or len(tokenizer) != len(vocabulary):
        raise RuntimeError("tiny word tokenizer did not keep the vocab.txt ids")
    return tokenizer


# ---------------------------------------------------------------------------------------------
# CLIP BPE tokenizer for tiny-sd, built from open_clip's shipped merges file
# ---------------------------------------------------------------------------------------------


def open_clip_bpe_path() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.default_bpe())


def clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) with exactly open_clip's SimpleTokenizer ids (49,408 tokens).

    Mirrors SimpleTokenizer.__init__: byte symbols, the same with '</w>', one token per merge,
    then the two special tokens, spelt the way transformers' CLIPTokenizer expects them.
    """
    from open_clip.tokenizer import bytes_to_unicode

    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the slice open_clip uses (the first line is a header)
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(work_dir: Path):
    """transformers CLIPTokenizer from vocab.json + merges.txt written in `work_dir`."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab_and_merges()
    work_dir = Path(work_dir)
    (work_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # "#version" header line, as in the original merges.txt (both slow and fast readers skip it)
    (work_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(work_dir), model_max_length=SD_TOKENIZER_MAX_LENGTH)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tiny CLIP tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


# ---------------------------------------------------------------------------------------------
# open_clip config registration
# ---------------------------------------------------------------------------------------------


def register_open_clip_configs() -> None:
    """Make `open_clip.create_model("tiny-clip")` / `get_tokenizer("tiny-siglip")` work (idempotent)."""
    import open_clip

    if any(name not in open_clip.list_models() for name in (TINY_CLIP, TINY_SIGLIP)):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def open_clip_config(name: str) -> dict:
    """The open_clip architecture config of tiny twin `name` (model_configs/<name>.json)."""
    return json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Builders: each writes one tiny model into an empty folder with the library's save_pretrained
# ---------------------------------------------------------------------------------------------


def progress_bar_libraries(name: str) -> tuple[str, ...]:
    """Libraries whose progress bars building or loading tiny model `name` would show."""
    return {TINY_CLIP: (), TINY_SD: ("transformers", "diffusers")}.get(name, ("transformers",))


def _seed_for(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


@contextlib.contextmanager
def _seeded(name: str):
    """Seed torch for a deterministic init without disturbing the caller's RNG state."""
    from augment.seeds import cpu_torch_seeded

    with cpu_torch_seeded(_seed_for(name)):
        yield


def build_tiny_sd_pipeline(work_dir: Path):
    """The tiny StableDiffusionPipeline in memory (its tokenizer files are written in work_dir)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer(work_dir)
    with _seeded(TINY_SD):
        unet = UNet2DConditionModel(**SD_UNET_CONFIG)
        vae = AutoencoderKL(**SD_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD_TEXT_CONFIG))
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_tiny_sd(out_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tiny-sd-tok-") as work_dir:
        pipe = build_tiny_sd_pipeline(Path(work_dir))
        pipe.save_pretrained(str(out_dir), safe_serialization=True)


def _build_tiny_captioner(out_dir: Path) -> None:
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    tokenizer = build_word_tokenizer(out_dir)
    # BLIP's decoder starts from bos (real BLIP: an extra [DEC] token) and stops at [SEP]
    text_config = dict(
        CAPTIONER_TEXT_CONFIG,
        vocab_size=len(tokenizer),
        bos_token_id=CLS_ID,
        eos_token_id=SEP_ID,
        sep_token_id=SEP_ID,
        pad_token_id=PAD_ID,
    )
    config = BlipConfig(
        text_config=text_config,
        vision_config=dict(CAPTIONER_VISION_CONFIG),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    with _seeded(TINY_CAPTIONER):
        model = BlipForConditionalGeneration(config)
    size = CAPTIONER_VISION_CONFIG["image_size"]
    image_processor = BlipImageProcessor(
        size={"height": size, "width": size}, image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD)
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))


def _build_tiny_paraphraser(out_dir: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = build_word_tokenizer(out_dir, model_input_names=["input_ids", "attention_mask"])
    # T5 convention: the decoder starts from the pad token; [SEP] (appended by the tokenizer) ends
    config = T5Config(
        **PARAPHRASER_CONFIG,
        vocab_size=len(tokenizer),
        pad_token_id=PAD_ID,
        eos_token_id=SEP_ID,
        decoder_start_token_id=PAD_ID,
    )
    with _seeded(TINY_PARAPHRASER):
        model = T5ForConditionalGeneration(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _build_tiny_mlm(out_dir: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = build_word_tokenizer(out_dir)
    config = BertConfig(**MLM_CONFIG, vocab_size=len(tokenizer), pad_token_id=PAD_ID)
    with _seeded(TINY_MLM):
        model = BertForMaskedLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


_BUILDERS: dict[str, Callable[[Path], None]] = {
    TINY_SD: _build_tiny_sd,
    TINY_CAPTIONER: _build_tiny_captioner,
    TINY_PARAPHRASER: _build_tiny_paraphraser,
    TINY_MLM: _build_tiny_mlm,
}
_USES_WORD_VOCAB = {TINY_CAPTIONER, TINY_PARAPHRASER, TINY_MLM}


# ---------------------------------------------------------------------------------------------
# Fingerprints, saving and the cache
# ---------------------------------------------------------------------------------------------


def is_tiny_name(name: str) -> bool:
    """Whether `name` names a built-in twin (or mistypes one: `tiny-clp`). A path whose folder starts
    with `tiny-` (`tiny-lab/run1/ckpt`, an existing `tiny-run/`) is a path: it was refused as an unknown
    twin, and a default masked LM chosen by that spelling was the random tiny-mlm."""
    if not name.startswith("tiny-"):
        return False
    if name in TINY_NAMES:
        return True
    return not ("/" in name or os.sep in name or os.path.exists(os.path.expanduser(name)))


def check_tiny_name(name: str) -> str:
    if name not in TINY_NAMES:
        from augment.errors import ModelLoadError

        raise ModelLoadError(f"unknown tiny model '{name}'; known: {', '.join(TINY_NAMES)}")
    return name


def tiny_recipe(name: str) -> dict:
    """Everything that determines a tiny model's files (its fingerprint is this dict's hash)."""
    check_tiny_name(name)
    if name in FAMILY_TWINS:
        configs = _family_module(name).tiny_config(name)
    else:
        configs = _own_recipe_configs(name)
    recipe = {"name": name, "recipe_version": RECIPE_VERSION, "seed": _seed_for(name), "configs": configs}
    if name in _USES_WORD_VOCAB:
        recipe["word_vocabulary_sha256"] = hashlib.sha256(
            "\n".join(word_vocabulary()).encode("utf-8")
        ).hexdigest()
    return recipe


def _family_module(name: str):
    import importlib

    return importlib.import_module(FAMILY_TWINS[name])


def _own_recipe_configs(name: str) -> dict:
    return {
        TINY_SD: {
            "unet": SD_UNET_CONFIG,
            "vae": SD_VAE_CONFIG,
            "text": SD_TEXT_CONFIG,
            "scheduler": SD_SCHEDULER_CONFIG,
            "bpe_sha256": hashlib.sha256(open_clip_bpe_path().read_bytes()).hexdigest(),
        },
        TINY_CAPTIONER: {"vision": CAPTIONER_VISION_CONFIG, "text": CAPTIONER_TEXT_CONFIG},
        TINY_PARAPHRASER: {"t5": PARAPHRASER_CONFIG},
        TINY_MLM: {"bert": MLM_CONFIG},
    }[name]


@functools.lru_cache(maxsize=None)  # the recipe cannot change within one process
def tiny_fingerprint(name: str) -> str:
    text = json.dumps(tiny_recipe(name), sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "open_clip_torch", "transformers", "diffusers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def _write_manifest(folder: Path, name: str) -> None:
    manifest = {
        "name": name,
        "fingerprint": tiny_fingerprint(name),
        "recipe_version": RECIPE_VERSION,
        "seed": _seed_for(name),
        "role": TINY_ROLES[name],
        "note": "random weights, for tests and offline runs only (built by augment.tiny)",
        "built_with": _library_versions(),
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict | None:
    """The folder's tiny.json, None when it has none or it is no JSON object (a list, damaged): such a folder is
    no twin (`models.base.recorded_tiny_twin`), and a cached twin with one is built again."""
    from augment.json_records import DamagedRecord, read_json_object

    try:
        return read_json_object(Path(folder) / MANIFEST_NAME)
    except (OSError, DamagedRecord):
        return None


def is_current(folder: Path, name: str) -> bool:
    manifest = read_manifest(folder)
    return bool(manifest) and manifest.get("fingerprint") == tiny_fingerprint(name)


def _build_into(folder: Path, name: str) -> None:
    with quiet_progress_bars(progress_bar_libraries(name)):
        with _seeded(name):
            if name in FAMILY_TWINS:
                _family_module(name).build_tiny(name, folder)
            else:
                _BUILDERS[name](folder)
    _write_manifest(folder, name)  # written last: its presence means the folder is complete


def save_tiny(out_dir: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Build the tiny models `names` (default: all) into `out_dir/<name>/`; returns name -> folder.

    Each model is built in a temporary sibling folder and renamed into place when complete.
    """
    out_dir = Path(out_dir).expanduser()
    names = list(names) if names is not None else list(TINY_NAMES)
    for name in names:
        check_tiny_name(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        written[name] = _build_in_place(out_dir, name, lambda tmp, name=name: _build_into(tmp, name))
    return written


def _build_in_place(root: Path, name: str, build: Callable[[Path], object]) -> Path:
    """`build(tmp)` into a temporary sibling folder, then renamed to root/name when complete."""
    tmp = staging_path(root / name)  # a killed build's folder is one `swap_folder_into_place` deletes later
    tmp.mkdir()
    try:
        build(tmp)
        readable_as_umask(tmp)
        swap_folder_into_place(tmp, root / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / name


def tiny_cache_root() -> Path:
    """`$MATPLUS_TINY_DIR`, default `augment.source_cache.cache_home()/tiny`."""
    from augment.source_cache import cache_home

    return Path(os.environ["MATPLUS_TINY_DIR"]).expanduser() if os.environ.get("MATPLUS_TINY_DIR") else cache_home() / "tiny"


def tiny_dir(name: str) -> Path:
    """Folder of tiny model `name` in the cache, built and saved there on first use (`cached_build`)."""
    check_tiny_name(name)

    def build(tmp: Path) -> None:
        log.info("building tiny model %s in %s", name, tiny_cache_root() / name)
        _build_into(tmp, name)

    return cached_build(name, lambda folder: is_current(folder, name), build, what="tiny model")


def cached_build(name: str, current: Callable[[Path], bool], build: Callable[[Path], object],
                 what: str = "model", timeout: float = 600) -> Path:
    """Folder `name` in the tiny cache: as it is when `current(folder)`, else made by `build(tmp)`
    in a temporary folder renamed into place. A file lock per name keeps two processes from
    building it at once; the second finds the finished folder when it gets the lock."""
    from filelock import FileLock

    root = tiny_cache_root()
    folder = root / name
    if current(folder):
        return folder
    if _process_group_started():
        build = functools.partial(_build_in_fresh_process, name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{name}.lock"), timeout=timeout):
            if not current(folder):
                _build_in_place(root, name, build)
    except OSError as exc:  # read-only or full disk, lock timeout (filelock.Timeout is a TimeoutError)
        from augment.errors import ModelLoadError

        raise ModelLoadError(
            f"cannot build {what} '{name}' in {root}: {exc}; set MATPLUS_TINY_DIR to a writable folder"
        ) from exc
    return folder


def _process_group_started() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def build_cache_entry(name: str, folder: str | os.PathLike) -> None:
    """Build cache entry `name` (a tiny model, or world-mlm) into the empty `folder`, in this process."""
    folder = Path(folder)
    if name == "world-mlm":
        from augment import world_mlm

        with quiet_progress_bars():
            world_mlm.build_world_mlm(folder)
        return
    check_tiny_name(name)
    _build_into(folder, name)


def _build_in_fresh_process(name: str, folder: Path) -> None:
    """`build_cache_entry` in a child process without a process group.

    transformers (5.x, `should_save_on_this_rank`) writes a model's files only on rank 0 once a
    process group is up: a tiny model built by another rank of a torchrun launch was an empty
    folder with a manifest, which every rank then failed to load. A fresh interpreter has no group.
    """
    import subprocess
    import sys

    log.info("building %s in %s, in a separate process (this one is a rank of a process group)",
             name, tiny_cache_root() / name)
    code = "import sys; from augment.tiny import build_cache_entry; build_cache_entry(sys.argv[1], sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                       os.environ.get("PYTHONPATH")]))}
    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(variable, None)  # the child is no rank of the launch
    done = subprocess.run([sys.executable, "-c", code, name, str(folder)], env=env)
    if done.returncode != 0:
        raise OSError(f"its build in a separate process failed (exit status {done.returncode}; its error is above)")
