"""`i2t-<model>`: new captions for each image from an image captioner.

`<model>` (or `--model`) is anything `registry.load_captioner` takes: `blip` / `blip-large`
(aliases), `default` (`registry.DEFAULT_MODELS["captioner"]`), a Hub id of a BLIP-family or other
transformers image-text-to-text model, a local folder, or `tiny-captioner`. (`i2t-human` is a
method of its own, the dataset's other human captions: see `human.py`.)

Images are batched (`--batch-size` images per `generate` call) and captioned with nucleus
sampling (the `--top-p`/`--sampling-top-k`/`--temperature`/`--max-new-tokens`/`--max-rounds` options
shared with `t2t-`, defined in `paraphrase.py`; a model's saved beam and penalty settings are
overridden there). Each image gets up to N distinct captions (NFKC, case folded, whitespace and final
punctuation normalised), empty ones dropped, re-sampled for up to `--max-rounds` rounds; rows of
an image that ended with fewer than N carry a provenance note.
Rows belong to the image, not to one of its captions: `source_caption_index` is -1.

`--prompt` starts every caption with a text prefix (BLIP's conditional captioning, e.g.
"a picture of"); BLIP returns the prefix as part of its caption, which is kept, and an output that
is the prefix alone (normalised as above) is dropped as an empty one. For other models the echoed
input tokens are dropped and only the generated continuation is kept.

Outputs are decoded as `models.captioner` decodes its captions (`decode_captions`: with
transformers' tokenization clean-up, so BLIP's WordPiece output reads "a man's hat", not
"a man ' s hat").

Determinism: as for `t2t-` (torch seeded per batch and round from the first image's identity),
rows are identical when the same command is re-run with the same `--batch-size`.
"""
from __future__ import annotations

from dataclasses import asdict

from augment.generators import MODEL_OPTIONS
from augment.generators.base import Generator
from augment.generators.paraphrase import (
    SAMPLING_OPTIONS,
    DistinctCollector,
    Sampling,
    batch_seed,
    chunked,
    clean_output,
    model_id,
    model_name_for,
    release_model,
    shortfall_note,
)

PREFIXES = ["i2t-"]
ROLE = "captioner"
NO_CAPTION = -1  # source_caption_index of rows made from the image alone


class CaptionerGenerator(Generator):
    # 2 (2026-12-03): captions decoded as the captioning models decode (man's, not man ' s), the
    # model's saved decoding settings overridden by the recorded ones; a prompt-only output dropped.
    # 3 (2026-12-06): outputs deduplicated after NFKC and case folding, a final '。' ignored (`normalised`):
    # other captions kept for an image whose outputs differ only so (non-ASCII ones)
    # (bdaf9f2 was written at 08:25 on another branch; it reached the history, rebased, at 09:01:28: its commit time)
    # 4 (2026-12-08): an output wrapped in paired quotes of other typographies (‘…’, «…», „…“, 「…」) unwrapped
    # (`clean_output`), so a caption echoed in them is no new output. Raised with the change itself, so no
    # code wrote these rows as recipe 3: no `recipe_since` (a pool recording 3 is always an earlier one's)
    recipe, recipe_since = 4, None  # 3: bdaf9f2; 2: f0f7e70, 1e55541
    reads_pixels = True
    modality = "text"

    def __init__(self, method: str, model_name: str, *, sampling: Sampling = Sampling(),
                 prompt: str | None = None, batch_size: int = 16, device: str = "cpu",
                 dtype: str = "fp32", revision: str | None = None):
        self.method = method
        self.model = model_id(model_name, ROLE)
        self.model_revision = revision
        self.model_name = model_name
        self.sampling = sampling
        self.prompt = prompt or None
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.captioner = None
        self._load()  # now, so a bad model name fails before any pool is written

    def _load(self) -> None:
        from augment.registry import load_captioner

        self.captioner, self.processor = load_captioner(
            self.model_name, self.device, self.dtype, revision=self.model_revision)
        # BLIP echoes a conditional prompt as the start of its caption; keep it there
        self.keeps_prompt = type(self.captioner).__name__.startswith("Blip")

    def params(self) -> dict:
        return {"prompt": self.prompt, "batch_size": self.batch_size, "dtype": self.dtype, **asdict(self.sampling)}

    def _inputs(self, images: list) -> dict:
        kwargs = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kwargs)
        dtype = next(self.captioner.parameters()).dtype
        return {name: (value.to(self.captioner.device, dtype) if value.is_floating_point()
                       else value.to(self.captioner.device))
                for name, value in inputs.items()}

    def sample(self, images: list, per_image: int) -> list[list[str]]:
        """`per_image` cleaned captions for each image (torch must be seeded by the caller)."""
        import torch

        inputs = self._inputs(images)
        with torch.inference_mode():
            out = self.captioner.generate(**inputs, **self.sampling.generate_kwargs(per_image))
        input_ids = inputs.get("input_ids")
        if input_ids is not None and not self.keeps_prompt and out.shape[1] >= input_ids.shape[1]:
            echoed = input_ids.repeat_interleave(per_image, dim=0)
            if torch.equal(out[:, :input_ids.shape[1]], echoed):
                out = out[:, input_ids.shape[1]:]
        texts = self._decode(out)
        return [texts[i * per_image:(i + 1) * per_image] for i in range(len(images))]

    def _decode(self, ids) -> list[str]:
        from models.captioner import decode_captions  # read as the captioning model reads its own

        decoder = self.processor if hasattr(self.processor, "batch_decode") else self.processor.tokenizer
        return [clean_output(t) for t in decode_captions(decoder, ids)]

    def _kept_prompt_alone(self) -> list[str]:
        """The texts of an output that is the kept prompt alone: as given, and as the model returns it
        (its tokenizer splits punctuation the decode does not join again: "a picture of:" comes back
        "a picture of :")."""
        if not (self.prompt and self.keeps_prompt):
            return []
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        ids = tokenizer([self.prompt], add_special_tokens=False, return_tensors="pt")["input_ids"]
        return [self.prompt, *self._decode(ids)]

    def caption_batch(self, items: list[dict], n: int, seed: int) -> list[DistinctCollector]:
        import torch

        # a kept prompt alone ("a picture of") is an empty caption, as the stripped echo is for other models
        refuse = self._kept_prompt_alone()
        collectors = [DistinctCollector(n, refuse=refuse) for _ in items]
        for round_index in range(self.sampling.max_rounds):
            todo = [i for i, c in enumerate(collectors) if not c.full]
            if not todo:
                break
            torch.manual_seed(batch_seed(seed, items[0]["image_id"], NO_CAPTION, round_index))
            samples = self.sample([items[i]["image"] for i in todo], n)
            for i, texts in zip(todo, samples):
                for text in texts:
                    collectors[i].offer(text, round_index)
        return collectors

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        if self.captioner is None:  # released by close() at the end of an earlier run
            self._load()
        rows, done = [], 0
        for batch in chunked(items, self.batch_size):
            for item, collector in zip(batch, self.caption_batch(batch, n, seed)):
                note = shortfall_note(len(collector.kept), n, self.sampling.max_rounds, "captions")
                for k, (text, round_index) in enumerate(collector.kept):
                    rows.append(self.row(item, NO_CAPTION, k, seed, caption=text, model=self.model,
                                         prompt=self.prompt, round=round_index, top_p=self.sampling.top_p,
                                         temperature=self.sampling.temperature, **note))
            done += len(batch)
            self.shard_progress(done, len(items), "images")
        return rows

    def close(self) -> None:
        release_model(self, "captioner")


def add_arguments(group) -> None:
    """`--prompt` only: the sampling options are defined once, in paraphrase.py."""
    group.add_argument("--prompt", default=None,
                       help="i2t-: text every caption starts from (BLIP conditional captioning, e.g. 'a picture of')")


def options_read(method: str, args) -> set[str]:
    return {"prompt", *SAMPLING_OPTIONS, *MODEL_OPTIONS}


def build(method: str, args) -> Generator:
    return CaptionerGenerator(
        method, model_name_for(method, PREFIXES[0], args), sampling=Sampling.from_args(args),
        prompt=getattr(args, "prompt", None), batch_size=getattr(args, "batch_size", 16),
        device=getattr(args, "device", "cpu"), dtype=getattr(args, "dtype", "fp32"),
        revision=getattr(args, "model_revision", None),
    )
