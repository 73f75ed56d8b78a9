"""Guards of the Stable Diffusion generators' calls and settings and of the paraphrasers' sampling (audit CP).

Each test here failed under a mutation that had passed every test of its module: the diffusion tests drive the
generators through a recording stand-in for the diffusers pipeline (no model: what each call is asked for is the
point), the paraphrase tests call the shared sampling helpers directly.
"""
from __future__ import annotations

import json
import types

import pytest

from tests.conftest import without_model


# ----------------------------------------------------------------------------- Stable Diffusion


class RecordingPipe:
    """A diffusers pipeline stand-in: records each call's arguments and returns one plain image per slot (at the
    init image's size for img2img, else at the asked size), flagging the slots in `flagged` as the checker does."""

    vae_scale_factor = 8

    def __init__(self, sample_size=8, flagged=(), safety_checker=None):
        self.unet = types.SimpleNamespace(config=types.SimpleNamespace(sample_size=sample_size))
        self.scheduler, self.safety_checker, self.flagged, self.calls = object(), safety_checker, set(flagged), []

    def __call__(self, **kwargs):
        from PIL import Image

        self.calls.append(kwargs)
        count = len(kwargs["prompt"]) * kwargs["num_images_per_prompt"]
        sizes = [image.size for image in kwargs["image"]] if "image" in kwargs else \
            [(kwargs["width"] or 64, kwargs["height"] or 64)] * count
        images = [Image.new("RGB", size, (slot, 0, 0)) for slot, size in enumerate(sizes)]
        nsfw = [slot in self.flagged for slot in range(count)] if self.safety_checker else None
        return types.SimpleNamespace(images=images, nsfw_content_detected=nsfw)


def sd_generator(method: str, pipe=None, **settings):
    from augment.generators.diffusion import GENERATOR_CLASSES, DiffusionSettings

    return GENERATOR_CLASSES[method](DiffusionSettings(**{"model": "tiny-sd", "batch_size": 4, **settings}),
                                     pipe=pipe or RecordingPipe())


def coloured_item(image_id: str, size: tuple[int, int], captions=("a red square", "a blue circle")) -> dict:
    from PIL import Image

    return {"image_id": image_id, "image": Image.new("RGB", size, (200, 30, 30)), "captions": list(captions),
            "split": "train"}


def test_the_sd_pipelines_are_asked_for_the_settings_guidance_negative_prompt_size_and_strength():
    """Guards audit CP's D21-D23, D25, D28, D29: either pipeline call run at diffusers' default guidance scale or
    strength, without the negative prompt, or with --height and --width swapped, passed every test (the tiny
    runs used the defaults and square images)."""
    t2i = sd_generator("t2i-sd", guidance_scale=3.0, negative_prompt="blurry", height=48, width=80)
    rows = t2i.generate([coloured_item("i0", (64, 64))], 1, seed=0)
    (call,) = t2i.pipe.calls
    assert (call["guidance_scale"], call["negative_prompt"], call["height"], call["width"]) == (3.0, ["blurry"] * 2, 48, 80)
    assert [json.loads(row["provenance"])["size"] for row in rows] == [[80, 48]] * 2
    i2i = sd_generator("t-i2i-sd", guidance_scale=2.0, negative_prompt="dark", strength=0.3)
    i2i.generate([coloured_item("i0", (64, 64))], 1, seed=0)
    (call,) = i2i.pipe.calls
    assert (call["guidance_scale"], call["negative_prompt"], call["strength"]) == (2.0, ["dark"] * 2, 0.3)


def test_an_i2i_call_holds_sources_of_one_generation_size_only():
    """Guards audit CP's D24: i2i calls planned without the size check passed every test (each tried one source size);
    a wide source after a square one was then squeezed to the square's size and its row recorded the wrong size."""
    generator = sd_generator("t-i2i-sd", strength=0.5)
    rows = generator.generate([coloured_item("square", (64, 64), ["a"]), coloured_item("wide", (80, 48), ["b"])], 1, 0)
    assert [[image.size for image in call["image"]] for call in generator.pipe.calls] == [[(64, 64)], [(104, 64)]]
    assert [json.loads(row["provenance"])["generation_size"] for row in rows] == [[64, 64], [104, 64]]
    assert [row["image"].size for row in rows] == [(64, 64), (80, 48)]


def test_a_flagged_image_is_noted_on_its_own_captions_rows_only():
    """Guards audit CP's D13: the flagged images counted per source image (not per caption) passed every test (the
    checker test used one caption per image); the other captions' rows then said that one of their images was
    dropped."""
    generator = sd_generator("t2i-sd", pipe=RecordingPipe(flagged={0}, safety_checker=object()), safety_checker=True)
    rows = generator.generate([coloured_item("i0", (64, 64))], 2, seed=0)  # one call: 2 captions x 2 images
    notes = {row["row_id"]: json.loads(row["provenance"]).get("note") for row in rows}
    assert notes == {"t2i-sd:i0:0:1": "1 of 2 images of this caption dropped: flagged by the safety checker",
                     "t2i-sd:i0:1:0": None, "t2i-sd:i0:1:1": None}


def test_a_swapped_scheduler_keeps_the_models_schedule_and_an_unfitting_one_is_refused():
    """Guards audit CP's D07 and D08: the scheduler swapped in from its class defaults (not the model's config), or
    swapped without the compatibility check, passed every test (tiny-sd's schedule is the defaults')."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from augment.errors import MatPlusError
    from augment.generators.diffusion import swap_scheduler

    pipe = types.SimpleNamespace(scheduler=DDIMScheduler(num_train_timesteps=500, beta_start=0.002, beta_end=0.03))
    swap_scheduler(pipe, "EulerDiscreteScheduler")
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert (pipe.scheduler.config.num_train_timesteps, pipe.scheduler.config.beta_end) == (500, 0.03)
    with pytest.raises(MatPlusError, match="does not fit this model"):
        swap_scheduler(pipe, "FlowMatchEulerDiscreteScheduler")


def test_the_model_resolution_is_the_short_side_of_a_non_square_sample_size():
    """Guards audit CP's D05: the long side of a (height, width) sample size passed every test (all square)."""
    from augment.generators.diffusion import model_resolution

    assert model_resolution(RecordingPipe(sample_size=(64, 96))) == 512
    assert model_resolution(types.SimpleNamespace(vae_scale_factor=8, default_sample_size=128)) == 1024


def test_sd_options_are_parsed_into_the_settings_that_shape_the_images():
    """Guards audit CP's D30, D31, D36-D38: --height/--width off the multiple of 8 accepted, --strength 1 refused,
    and --negative-prompt, --guidance-scale or the height and width lost or swapped on their way to the settings,
    passed every test."""
    import argparse

    from augment.cli import build_parser
    from augment.generators.diffusion import _size, _strength, settings_from_args

    with pytest.raises(argparse.ArgumentTypeError, match="multiple of 8"):
        _size("60")
    assert _size("64") == 64 and _strength("1") == 1.0
    args = build_parser().parse_args(["generate", "--method", "t2i-sd", "--source", "s", "--out", "o", "--height", "48",
                                      "--width", "80", "--guidance-scale", "3", "--negative-prompt", "blurry"])
    settings = settings_from_args("t2i-sd", args)
    assert (settings.height, settings.width, settings.guidance_scale, settings.negative_prompt) == (48, 80, 3.0, "blurry")


def test_captions_per_image_above_an_images_caption_count_takes_all_its_captions():
    """Guards audit CP's D34: `captions_used` not capped by the image's captions passed every test; --captions-per-image
    5 then planned jobs for captions an image of 2 does not have."""
    generator = sd_generator("t2i-sd", captions_per_image=5)
    assert [(job.caption_index, job.k) for job in generator.jobs([coloured_item("i0", (64, 64))], 1)] == [(0, 0), (1, 0)]


def test_a_checked_pool_that_dropped_nothing_records_no_drop():
    """Guards audit CP's D35: `pool_notes` noting a drop of zero passed every test (the checker test flags one)."""
    from datasets import Dataset

    generator = sd_generator("t2i-sd", safety_checker=True)
    items = Dataset.from_dict({"captions": [["a", "b"], ["c"]]})
    assert generator.pool_notes(items, 2, num_rows=6) == {}
    assert generator.pool_notes(items, 2, num_rows=5)["nsfw_dropped"] == 1


def test_the_params_record_the_safety_checker_that_ran_not_the_one_asked_for():
    """Guards audit CP's D40: params recording --safety-checker as asked passed every test; a model without a checker
    (tiny-sd, SDXL) then recorded checked images that no checker saw."""
    assert sd_generator("t2i-sd", safety_checker=True).params()["safety_checker"] is False


# ----------------------------------------------------------------------------- paraphrasers' and captioners' sampling


def test_the_generate_arguments_carry_the_recorded_sampling_settings():
    """Guards audit CP's P23-P25: `generate_kwargs` without its top-k (transformers' default of 50 applying under
    --sampling-top-k 0), temperature or top-p passed every test (the CLI tests read them back from params only)."""
    from augment.generators.paraphrase import Sampling

    kwargs = Sampling(top_p=0.7, top_k=0, temperature=1.3, max_new_tokens=9).generate_kwargs(3)
    assert {key: kwargs[key] for key in ("do_sample", "top_p", "top_k", "temperature", "max_new_tokens",
                                         "num_return_sequences", "num_beams")} == \
        {"do_sample": True, "top_p": 0.7, "top_k": 0, "temperature": 1.3, "max_new_tokens": 9,
         "num_return_sequences": 3, "num_beams": 1}


def test_outputs_differing_only_in_inner_whitespace_are_one_output():
    """Guards audit CP's P04: `normalised` keeping runs of inner whitespace passed every test; "a  dog runs" then
    counted as a paraphrase of "a dog runs"."""
    from augment.generators.paraphrase import DistinctCollector

    collector = DistinctCollector(3, refuse=["A dog runs."])
    for text in ("a  dog\truns", "A dog\n runs", "A cat  sits", "a cat sits"):
        collector.offer(text, 0)
    assert [text for text, _ in collector.kept] == ["A cat  sits"]


def test_every_lead_in_line_of_an_answer_is_dropped():
    """Guards audit CP's P09: `answer_of` dropping one lead-in line only passed every test (each output had one); the
    second ("New version:") then became the paraphrase."""
    from augment.generators.paraphrase import answer_of

    assert answer_of("Okay, here is a rewrite:\nNew version:\nA dog runs on grass.") == "A dog runs on grass."


def test_seq2seq_and_untemplated_prompts_are_encoded_with_their_special_tokens():
    """Guards audit CP's P22: the special tokens added only to untemplated causal prompts passed every test; a T5
    paraphraser then read its prompt without the end-of-sequence token it was trained with."""
    import torch

    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    class Tokenizer:
        pad_token_id = 0

        def __init__(self, chat_template):
            self.chat_template, self.added = chat_template, []

        def apply_chat_template(self, messages, **kwargs):
            return messages[0]["content"]

        def __call__(self, prompts, add_special_tokens, **kwargs):
            self.added.append(add_special_tokens)
            ones = torch.ones(len(prompts), 2, dtype=torch.long)
            return {"input_ids": ones, "attention_mask": ones}

        def batch_decode(self, ids, skip_special_tokens):
            return ["a dog"] * len(ids)

    class Model:
        device = torch.device("cpu")

        def generate(self, input_ids, num_return_sequences, **kwargs):
            return torch.ones(len(input_ids) * num_return_sequences, 4, dtype=torch.long)

    added = {}
    for kind, template in (("seq2seq", None), ("causal", None), ("causal", "template")):
        tokenizer = Tokenizer(template)
        without_model(ParaphraseGenerator, kind=kind, tokenizer=tokenizer, lm=Model(), prompt_template="{caption}",
                      sampling=Sampling()).sample(["a cat"], 1)
        added[kind, template] = tokenizer.added
    assert added == {("seq2seq", None): [True], ("causal", None): [True], ("causal", "template"): [False]}


def test_the_default_paraphraser_is_recorded_by_its_model_id_and_a_closed_one_lets_its_model_go():
    """Guards audit CP's P33 and P34: `model_id` recording "default" rather than the model it names, and
    `release_model` keeping the model, passed every test."""
    from augment import registry
    from augment.generators.paraphrase import ParaphraseGenerator, model_id

    assert model_id("default", "paraphraser") == str(registry.DEFAULT_MODELS["paraphraser"]) != "default"
    generator = without_model(ParaphraseGenerator, lm=object())
    generator.close()
    assert generator.lm is None


def test_a_paraphrase_rows_provenance_records_its_top_p_and_temperature():
    """Guards audit CP's P40: each row's provenance recording the top-p as its temperature passed every test (they read
    pool.json's params, not a row's)."""
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    generator = without_model(ParaphraseGenerator, method="t2t-x", lm=object(), model="m", kind="seq2seq",
                              prompt_template="{caption}", batch_size=4,
                              sampling=Sampling(top_p=0.8, temperature=1.3, max_rounds=1),
                              sample=lambda captions, n: [["a new one"] * n for _ in captions])
    (row,) = generator.generate([{"image_id": "i0", "captions": ["a dog"], "split": "train"}], 1, seed=0)
    provenance = json.loads(row["provenance"])
    assert (provenance["top_p"], provenance["temperature"]) == (0.8, 1.3)
