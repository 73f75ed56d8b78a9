"""Stable Diffusion image generators: `t2i-sd` (text-to-image) and `t-i2i-sd` (text-guided img2img).

Both write rows of modality "image" keyed by the source caption they were made from
(`source_caption_index`): `--n` new images per caption, for the first `--captions-per-image`
captions of each source image (default: all).

* `t2i-sd`: a new image from the caption alone, at `--height`/`--width` (default: the model's).
* `t-i2i-sd`: the source image re-drawn under its caption with `--strength`. The source is
  resized so that its short side is the model's resolution and both sides are multiples of 8
  (aspect ratio kept); the image generated at that size is resized back to the source's size, so
  a pool image is a drop-in replacement for its source image. Both sizes are in the row's
  provenance (`source_size`, `generation_size`).

Batching. `t2i-sd` calls the pipeline with up to `--batch-size` images per call: several prompts,
`num_images_per_prompt` images each. `t-i2i-sd` passes one prompt and one source image per image
(diffusers duplicates the init images of a multi-prompt call as i0, i1, i0, i1 while it repeats
the prompts as p0, p0, p1, p1, which would pair images with the wrong captions).

Determinism. Every image has its own CPU `torch.Generator` seeded with `row_seed(...)`, so its
noise never depends on the other images of its call. Floating-point kernels do, slightly: the
same image computed in a batch of 8 and alone differs by ~1e-6, which flips a few 8-bit pixels.
Results are bit-exact for the same call SHAPE and the same SLOT in it, whatever the other slots
hold, so each row records its call layout (`batch`: prompts per call, images per prompt, slot)
and `regenerate_row` replays exactly that layout with padding in the other slots. A run with
`--batch-size 1` gives rows that a single-image call reproduces exactly. Same device, dtype and
(on CPU) thread count are assumed: intra-op thread count also changes CPU float results.

Provenance. pool.json `params` holds every setting that changes the images (steps, guidance,
negative prompt, strength or size, dtype, scheduler and pipeline class, whether a safety checker
ran); each row repeats them with the model id, revision, prompt, its call layout and, with
`--safety-checker`, the checker's NSFW flag (None when no checker ran, else False). A prompt
longer than the text encoder reads (77 CLIP tokens) is cut by diffusers with only a log line: its
rows record the part read (`prompt_read`), the prompt's token count and a note.

Safety checker. An image the checker flags comes back from diffusers as a black image: it is
dropped, not written. The other rows of its caption carry a note ("1 of 4 images of this caption
dropped: ..."), the finished pool.json records the pool's count (`nsfw_dropped`, with a `note`;
absent when none was), and the run prints that note. A shard made again drops the same images (each
depends only on its seed and call layout), and the count is taken from the finished shards, so a
resumed pool records what an uninterrupted one does. Row ids keep their k: a dropped image leaves a
gap (k is the image's seed, which `regenerate_row` needs). With a checker, params record
`flagged_images: dropped`: shards of a version that wrote flagged images are not resumed.
"""
from __future__ import annotations

import argparse
import logging
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from augment.arguments import non_negative_number, positive_int
from augment.errors import MatPlusError
from augment.generators import MODEL_OPTIONS
from augment.generators.base import Generator, row_seed

log = logging.getLogger(__name__)

METHODS = ["t2i-sd", "t-i2i-sd"]
SIZE_MULTIPLE = 8  # SD pipelines need image sides divisible by 8
PAD_PROMPT = ""  # filler prompt for the unused slots of a replayed call
PAD_SEED = 0


@dataclass(frozen=True)
class DiffusionSettings:
    """Everything that shapes the generated images (recorded as the pool's params)."""

    model: str
    revision: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 8
    steps: int = 50
    guidance_scale: float = 7.5
    negative_prompt: str | None = None
    scheduler: str | None = None  # diffusers scheduler class to swap in; None keeps the model's
    safety_checker: bool = False
    captions_per_image: int | None = None  # first K captions of each image; None = all
    height: int | None = None  # t2i only; None = the pipeline's default
    width: int | None = None
    strength: float = 0.75  # i2i only


@dataclass(frozen=True)
class ImageJob:
    """One image to make: source item, caption index (the prompt) and k (the image's number)."""

    item: dict
    caption_index: int
    k: int

    @property
    def prompt(self) -> str:
        return self.item["captions"][self.caption_index]

    @property
    def key(self) -> tuple[str, int, int]:
        return self.item["image_id"], self.caption_index, self.k


@dataclass
class Call:
    """One pipeline call: `prompts`, each with `images_per_prompt` slots (job or padding None)."""

    prompts: list[str]
    images_per_prompt: int
    slots: list[ImageJob | None]
    init_images: list | None = None  # i2i: one (resized) source image per slot
    generation_size: tuple[int, int] | None = None  # i2i: (width, height) the call runs at

    def layout(self, slot: int) -> dict:
        return {"prompts": len(self.prompts), "images_per_prompt": self.images_per_prompt, "slot": slot}


@dataclass(frozen=True)
class Made:
    """One generated image: the call and slot it came from, and the safety checker's flag (None: no checker)."""

    call: Call
    slot: int
    image: Any
    nsfw: bool | None


def flagged_note(flagged: int, n: int) -> dict[str, str]:
    """The provenance note of a caption's rows when the safety checker took some of its n images
    (as paraphrasers note a shortfall of distinct outputs)."""
    if not flagged:
        return {}
    return {"note": f"{flagged} of {n} images of this caption dropped: flagged by the safety checker"}


# ----------------------------------------------------------------------------- sizes


def round_to_multiple(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def generation_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) with the short side at `resolution`, aspect ratio kept, multiples of 8."""
    scale = resolution / min(width, height)
    return round_to_multiple(width * scale), round_to_multiple(height * scale)


def model_resolution(pipe) -> int:
    """The square size the model was trained at (UNet sample size x VAE scale factor)."""
    sample_size = getattr(getattr(pipe, "unet", None), "config", None)
    sample_size = getattr(sample_size, "sample_size", None)
    if sample_size is None:
        return int(getattr(pipe, "default_sample_size", 64) * pipe.vae_scale_factor)
    if isinstance(sample_size, (list, tuple)):
        sample_size = min(sample_size)
    return int(sample_size * pipe.vae_scale_factor)


# ----------------------------------------------------------------------------- pipelines


def swap_scheduler(pipe, name: str) -> None:
    """Replace the pipeline's scheduler by diffusers class `name`, built from the same config."""
    import diffusers

    compatible = sorted(cls.__name__ for cls in getattr(pipe.scheduler, "compatibles", []))
    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise MatPlusError(f"--scheduler {name!r} is not a diffusers scheduler; compatible: {', '.join(compatible)}")
    if compatible and name not in compatible and name != type(pipe.scheduler).__name__:
        raise MatPlusError(f"--scheduler {name!r} does not fit this model; compatible: {', '.join(compatible)}")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def load_pipeline(settings: DiffusionSettings, kind: str):
    from augment.registry import load_sd_pipeline

    if settings.dtype == "fp16" and str(settings.device).startswith("cpu"):
        raise MatPlusError("--dtype fp16 needs a GPU; use --dtype fp32 (or bf16) with --device cpu")
    pipe = load_sd_pipeline(settings.model, kind=kind, device=settings.device, dtype=settings.dtype,
                            revision=settings.revision, safety_checker=settings.safety_checker)
    if settings.safety_checker and getattr(pipe, "safety_checker", None) is None:
        log.warning("--safety-checker: model %s has no safety checker; images are not checked", settings.model)
    if settings.scheduler:
        swap_scheduler(pipe, settings.scheduler)
    return pipe


def seeded_generators(seeds: list[int]) -> list:
    """One CPU generator per image: CPU noise is the same whichever device runs the model."""
    import torch

    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


# ----------------------------------------------------------------------------- generator


class DiffusionGenerator(Generator):
    """Shared machinery; subclasses plan calls (`plan_calls`) and run one (`call_pipeline`)."""

    modality = "image"
    kind = "t2i"

    def __init__(self, settings: DiffusionSettings, pipe=None):
        self.settings = settings
        self.model = settings.model
        self.model_revision = settings.revision
        self._pipe = pipe
        self._prompt_cuts: dict[str, dict[str, Any]] = {}  # prompt -> `prompt_cut`

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = load_pipeline(self.settings, self.kind)
        return self._pipe

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe = None
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def params(self) -> dict[str, Any]:
        """Settings that change the images. Device and batch size are left out: a resumed run
        may use another GPU or batch size (each row's own layout is in its provenance)."""
        params = asdict(self.settings)
        for key in ("model", "revision", "device", "batch_size") + self.unused_settings:
            params.pop(key)
        params["pipeline"] = type(self.pipe).__name__
        # what ran, not what was asked: a model may ship without a checker (tiny-sd, SDXL)
        params["safety_checker"] = getattr(self.pipe, "safety_checker", None) is not None
        if params["safety_checker"]:  # shards of older versions wrote flagged (black) images: not kept on resume
            params["flagged_images"] = "dropped"
        params["scheduler"] = type(self.pipe.scheduler).__name__
        params["resolution"] = model_resolution(self.pipe)
        return params

    unused_settings: tuple[str, ...] = ()  # settings this method ignores: not in its params, refused as options

    # --- planning

    def captions_used(self, count: int) -> int:
        """How many of an image's `count` captions get images (`--captions-per-image`)."""
        return min(self.settings.captions_per_image or count, count)

    def jobs(self, items: list[dict], n: int) -> list[ImageJob]:
        return [
            ImageJob(item, c, k)
            for item in items
            for c in range(self.captions_used(len(item["captions"])))
            for k in range(n)
        ]

    def plan_calls(self, jobs: list[ImageJob], n: int) -> Iterator[Call]:
        """Group `jobs` (n per caption, in order) into pipeline calls."""
        raise NotImplementedError

    def call_pipeline(self, call: Call, seeds: list[int]):
        """Run `call`; returns (images, nsfw flags or None), one per slot."""
        raise NotImplementedError

    # --- running

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        made: dict[tuple, Made] = {}
        jobs = self.jobs(items, n)
        for call in self.plan_calls(jobs, n):
            made.update(self._run_call(call, seed))
            # images it makes (n per caption used), not the source images the bar counts
            self.shard_progress(len(made), len(jobs), "generated images")
        # a flagged image is the checker's black square, not an augmentation: no row. Each job's
        # image depends only on its own seed and call layout, so a shard made again (a resume)
        # drops the same ones; its caption's other rows say how many it lost
        flagged = Counter((t.item["image_id"], t.caption_index) for t in jobs if made[t.key].nsfw)
        # rows in source order (item, caption, k) whatever order the calls ran in
        return [self._row(t, made[t.key], seed, **flagged_note(flagged[t.item["image_id"], t.caption_index], n))
                for t in jobs if not made[t.key].nsfw]

    def _run_call(self, call: Call, seed: int) -> dict[tuple, Made]:
        seeds = [PAD_SEED if t is None else row_seed(seed, t.item["image_id"], t.caption_index, t.k) for t in call.slots]
        with warnings.catch_warnings():
            # diffusers' Euler scheduler hands a torch tensor to np.array, whose __array__ lacks NumPy 2's copy
            # keyword: a DeprecationWarning of those two libraries, which under PYTHONWARNINGS=error stopped
            # every t2i-sd / t-i2i-sd run with that scheduler (SDXL's default, or --scheduler) at its first call
            warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                                    category=DeprecationWarning)
            images, nsfw = self.call_pipeline(call, seeds)
        return {job.key: Made(call, slot, images[slot], None if nsfw is None else bool(nsfw[slot]))
                for slot, job in enumerate(call.slots) if job is not None}

    def _row(self, job: ImageJob, made: Made, seed: int, **notes: str) -> dict:
        cut = dict(self.prompt_cut(job.prompt))
        if cut:  # beside a safety-checker note, if any
            notes["note"] = "; ".join(filter(None, [notes.get("note"), cut.pop("note")]))
        return self.row(
            job.item, job.caption_index, job.k, seed, image=made.image,
            model=self.model, revision=self.model_revision, prompt=job.prompt,
            batch=made.call.layout(made.slot), nsfw=made.nsfw, params=self.params(),
            **self._row_extras(job, made.call, made.image), **cut, **notes,
        )

    def prompt_cut(self, prompt: str) -> dict[str, Any]:
        """What the row must say when the text encoder reads only the beginning of `prompt`: diffusers
        cuts a prompt at its tokenizer's length (77 CLIP tokens, start and end included) and only logs
        it, so the image follows `prompt_read` alone. {} for a prompt read whole (or no tokenizer)."""
        cache = self._prompt_cuts  # n images per caption: each prompt tokenized once
        if prompt not in cache:
            cache[prompt] = {}
            tokenizer = getattr(self.pipe, "tokenizer", None)
            limit = getattr(tokenizer, "model_max_length", None)
            if tokenizer is not None and isinstance(limit, int) and limit > 2:
                ids = tokenizer(prompt, truncation=False, verbose=False).input_ids  # start and end tokens included
                if len(ids) > limit:
                    read = tokenizer.decode(ids[1:limit - 1], skip_special_tokens=True)
                    if "\ufffd" not in prompt:
                        # a cut inside a character's byte tokens (Chinese, Japanese, emoji: 2-4 bytes each)
                        # decodes its read bytes as U+FFFD: prompt_read keeps the characters read whole
                        read = read.rstrip("\ufffd")
                    cache[prompt] = {
                        "prompt_read": read,
                        "prompt_tokens": len(ids) - 2,
                        "note": f"prompt cut to its first {limit - 2} of {len(ids) - 2} tokens by the text "
                                "encoder: the image follows prompt_read only",
                    }
        return cache[prompt]

    def pool_notes(self, items, n: int, num_rows: int) -> dict[str, Any]:
        """The images the safety checker flagged in the whole pool, counted as the jobs it has no
        row for (every other job makes one): kept shards of an earlier run count too, which a count
        kept by this process would miss."""
        if not self.settings.safety_checker:  # nothing is dropped without a checker: no count to take
            return {}
        import pyarrow.compute as pc

        from augment.sources import arrow_columns

        [captions] = arrow_columns(items, ["captions"])
        jobs = n * sum(self.captions_used(count) for count in pc.list_value_length(captions).to_pylist())
        dropped = jobs - num_rows
        if dropped <= 0:
            return {}
        return {"nsfw_dropped": dropped,
                "note": f"{dropped} of {jobs} images dropped, not written: flagged by the safety checker"}

    def _row_extras(self, job: ImageJob, call: Call, image) -> dict:
        return {"size": [image.width, image.height]}

    # --- regeneration

    def regenerate_row(self, item: dict, caption_index: int, k: int, seed: int, batch: dict | None = None) -> dict:
        """Make one row again, alone. With the row's recorded `batch` layout (its provenance) the
        call has the original shape and the row its original slot, the other slots padding, which
        makes the image bit-identical; without it, a one-image call (identical up to rounding).
        Made alone, it has no note of its caption's flagged images (and is made even if flagged)."""
        batch = batch or {"prompts": 1, "images_per_prompt": 1, "slot": 0}
        job = ImageJob(item, caption_index, k)
        return self._row(job, self._run_call(self.replay_call(job, batch), seed)[job.key], seed)

    def replay_call(self, job: ImageJob, batch: dict) -> Call:
        """A call of the recorded layout `batch` with `job` in its slot and padding elsewhere."""
        raise NotImplementedError


class TextToImageGenerator(DiffusionGenerator):
    """`t2i-sd`: each source caption -> `--n` new images."""

    method = "t2i-sd"
    kind = "t2i"

    unused_settings = ("strength",)

    def plan_calls(self, jobs: list[ImageJob], n: int) -> Iterator[Call]:
        """Calls of `prompts_per_call` prompts x `images_per_prompt` images (<= batch size).

        Each caption's n images are cut into chunks of `images_per_prompt`; chunks of the same
        length share a call. With n <= batch size a call holds batch_size // n whole captions.
        """
        images_per_prompt = min(n, self.settings.batch_size)
        prompts_per_call = max(1, self.settings.batch_size // images_per_prompt)
        per_caption = [jobs[i:i + n] for i in range(0, len(jobs), n)]  # jobs() gives n per caption
        chunks = [c[j:j + images_per_prompt] for c in per_caption for j in range(0, n, images_per_prompt)]
        pending: list[list[ImageJob]] = []
        for chunk in chunks:
            if pending and (len(chunk) != len(pending[0]) or len(pending) == prompts_per_call):
                yield self._call_of(pending)
                pending = []
            pending.append(chunk)
        if pending:
            yield self._call_of(pending)

    @staticmethod
    def _call_of(chunks: list[list[ImageJob]]) -> Call:
        return Call(prompts=[c[0].prompt for c in chunks], images_per_prompt=len(chunks[0]),
                    slots=[t for c in chunks for t in c])

    def replay_call(self, job: ImageJob, batch: dict) -> Call:
        prompts, per_prompt, slot = batch["prompts"], batch["images_per_prompt"], batch["slot"]
        slots: list[ImageJob | None] = [None] * (prompts * per_prompt)
        slots[slot] = job
        prompt_list = [PAD_PROMPT] * prompts
        prompt_list[slot // per_prompt] = job.prompt
        return Call(prompts=prompt_list, images_per_prompt=per_prompt, slots=slots)

    def call_pipeline(self, call: Call, seeds: list[int]):
        s = self.settings
        out = self.pipe(
            prompt=call.prompts,
            negative_prompt=[s.negative_prompt] * len(call.prompts) if s.negative_prompt else None,
            num_images_per_prompt=call.images_per_prompt,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            height=s.height,
            width=s.width,
            generator=seeded_generators(seeds),
            output_type="pil",
        )
        return out.images, getattr(out, "nsfw_content_detected", None)


class ImageToImageGenerator(DiffusionGenerator):
    """`t-i2i-sd`: each source image re-drawn under each of its captions, `--n` times."""
    reads_pixels = True

    method = "t-i2i-sd"
    kind = "i2i"

    unused_settings = ("height", "width")

    def generation_size_of(self, image) -> tuple[int, int]:
        return generation_size(image.width, image.height, model_resolution(self.pipe))

    def plan_calls(self, jobs: list[ImageJob], n: int) -> Iterator[Call]:
        """Calls of up to `batch_size` consecutive jobs that share a generation size."""
        pending: list[ImageJob] = []
        pending_size = None
        for job in jobs:
            size = self.generation_size_of(job.item["image"])
            if pending and (size != pending_size or len(pending) == self.settings.batch_size):
                yield self._call_of(pending, pending_size)
                pending = []
            pending.append(job)
            pending_size = size
        if pending:
            yield self._call_of(pending, pending_size)

    def _call_of(self, slots: list[ImageJob | None], size: tuple[int, int]) -> Call:
        from PIL import Image

        resized = {}
        init_images = []
        filler = next(t for t in slots if t is not None)
        for job in slots:
            item = (job or filler).item
            if item["image_id"] not in resized:
                resized[item["image_id"]] = item["image"].convert("RGB").resize(size, Image.Resampling.LANCZOS)
            init_images.append(resized[item["image_id"]])
        prompts = [PAD_PROMPT if t is None else t.prompt for t in slots]
        return Call(prompts=prompts, images_per_prompt=1, slots=list(slots), init_images=init_images,
                    generation_size=size)

    def replay_call(self, job: ImageJob, batch: dict) -> Call:
        slots: list[ImageJob | None] = [None] * (batch["prompts"] * batch["images_per_prompt"])
        slots[batch["slot"]] = job
        return self._call_of(slots, self.generation_size_of(job.item["image"]))

    def call_pipeline(self, call: Call, seeds: list[int]):
        from PIL import Image

        s = self.settings
        out = self.pipe(
            prompt=call.prompts,
            image=call.init_images,
            strength=s.strength,
            negative_prompt=[s.negative_prompt] * len(call.prompts) if s.negative_prompt else None,
            num_images_per_prompt=1,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            generator=seeded_generators(seeds),
            output_type="pil",
        )
        # back to each source's own size (padding slots have none: leave them as they are)
        images = [
            image if job is None else image.resize(job.item["image"].size, Image.Resampling.LANCZOS)
            for image, job in zip(out.images, call.slots)
        ]
        return images, getattr(out, "nsfw_content_detected", None)

    def _row_extras(self, job: ImageJob, call: Call, image) -> dict:
        return {"source_size": list(job.item["image"].size), "generation_size": list(call.generation_size)}


GENERATOR_CLASSES = {"t2i-sd": TextToImageGenerator, "t-i2i-sd": ImageToImageGenerator}


# ----------------------------------------------------------------------------- command line


def _size(text: str) -> int:
    value = positive_int(text)
    if value % SIZE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"must be a multiple of {SIZE_MULTIPLE}, got {text}")
    return value


def _strength(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_arguments(group) -> None:
    group.add_argument("--captions-per-image", type=positive_int, default=None, metavar="K",
                       help="t2i-sd/t-i2i-sd/t2i-render: use the first K captions of each image (default: all)")
    group.add_argument("--steps", type=positive_int, default=50,
                       help="t2i-sd/t-i2i-sd: denoising steps (default 50; i2i runs strength x steps)")
    group.add_argument("--guidance-scale", type=non_negative_number, default=7.5,
                       help="t2i-sd/t-i2i-sd: classifier-free guidance scale (default 7.5; <= 1 turns it off)")
    group.add_argument("--negative-prompt", default=None, help="t2i-sd/t-i2i-sd: negative prompt for every image")
    group.add_argument("--scheduler", default=None, metavar="CLASS",
                       help="t2i-sd/t-i2i-sd: diffusers scheduler class to use instead of the model's, "
                            "e.g. EulerDiscreteScheduler, DPMSolverMultistepScheduler")
    group.add_argument("--safety-checker", action="store_true",
                       help="t2i-sd/t-i2i-sd: load the model's NSFW checker; images it flags (black) are "
                            "dropped and counted in pool.json's nsfw_dropped (default: off)")
    group.add_argument("--height", type=_size, default=None, help="t2i-sd: image height (default: the model's)")
    group.add_argument("--width", type=_size, default=None, help="t2i-sd: image width (default: the model's)")
    group.add_argument("--strength", type=_strength, default=0.75,
                       help="t-i2i-sd: how far to move from the source image, 0-1 (default 0.75)")


def options_read(method: str, args) -> set[str]:
    """Both methods' options less the ones the method's settings leave unused (size for i2i, strength for t2i;
    the negative prompt at --guidance-scale 1 or below, where diffusers runs no classifier-free guidance)."""
    shared = {"captions_per_image", "steps", "guidance_scale", "negative_prompt", "scheduler", "safety_checker",
              "height", "width", "strength"}
    if _no_guidance(args):
        shared.discard("negative_prompt")
    return (shared - set(GENERATOR_CLASSES[method].unused_settings)) | MODEL_OPTIONS


def _no_guidance(args) -> bool:
    scale = getattr(args, "guidance_scale", None)
    return scale is not None and scale <= 1


def options_context(args) -> str:
    """What makes an option unread, for `check_options_read`'s line."""
    return f" --guidance-scale {args.guidance_scale:g} (no classifier-free guidance)" if _no_guidance(args) else ""


def settings_from_args(method: str, args) -> DiffusionSettings:
    from augment.registry import default_model

    settings = DiffusionSettings(
        model=getattr(args, "model", None) or default_model("sd"),
        revision=getattr(args, "model_revision", None),
        device=getattr(args, "device", "cpu"),
        dtype=getattr(args, "dtype", "fp32"),
        batch_size=getattr(args, "batch_size", 8),
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        scheduler=args.scheduler,
        safety_checker=args.safety_checker,
        captions_per_image=args.captions_per_image,
        height=args.height if method == "t2i-sd" else None,
        width=args.width if method == "t2i-sd" else None,
        strength=args.strength,
    )
    if method == "t-i2i-sd" and settings.steps * settings.strength < 1:
        raise MatPlusError(f"--steps {settings.steps} x --strength {settings.strength} leaves no denoising step")
    return settings


def build(method: str, args) -> Generator:
    from augment.registry import check_sd_folder

    settings = settings_from_args(method, args)
    check_sd_folder(settings.model, settings.revision)  # a broken folder fails before any pool is written
    return GENERATOR_CLASSES[method](settings)
