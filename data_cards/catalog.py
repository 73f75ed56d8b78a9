"""What the data cards know about methods and models: families, licenses, papers.

Kept apart from the templates so that prose (in the `.md.j2` files) and facts (here) can be
edited separately. Everything here is looked up by the `method` and `model` of a pool.json.
"""
from __future__ import annotations

from dataclasses import dataclass

UNKNOWN_MODEL_LICENSE = "unknown, check the model card"


@dataclass(frozen=True)
class Family:
    """A group of methods that share one card template."""

    name: str  # template file stem: data_cards/<name>.md.j2
    title: str
    task_categories: tuple[str, ...]


TEXT_FROM_TEXT = Family("text_from_text", "text from text", ("image-to-text",))
IMAGE_TO_TEXT = Family("image_to_text", "image to text", ("image-to-text",))
TEXT_TO_IMAGE = Family("text_to_image", "text to image", ("text-to-image",))
IMAGE_TO_IMAGE = Family("image_to_image", "image to image", ("image-to-image", "text-to-image"))
# control pools take their task categories from their modality (see `task_categories`)
CONTROL = Family("control", "control and derived pools", ())


_EXACT_METHODS = {
    "eda": TEXT_FROM_TEXT,
    "i2t-human": IMAGE_TO_TEXT,
    "i2t-scene": IMAGE_TO_TEXT,
    "t2i-sd": TEXT_TO_IMAGE,
    "t2i-render": TEXT_TO_IMAGE,
    "t-i2i-sd": IMAGE_TO_IMAGE,
    "img-aug": IMAGE_TO_IMAGE,
    "shuffle": CONTROL,
    "select": CONTROL,
    "adversarial": CONTROL,
}
# `t2t-<model>` and `i2t-<model>`: the model alias follows the prefix
_METHOD_PREFIXES = {"t2t-": TEXT_FROM_TEXT, "i2t-": IMAGE_TO_TEXT}

_MODALITY_TASKS = {
    "text": ("image-to-text",),
    "image": ("text-to-image",),
    "pair": ("image-to-text", "text-to-image"),
}


def family_of(method: str) -> Family:
    """The card family of a method; unknown methods get the generic control card."""
    if method in _EXACT_METHODS:
        return _EXACT_METHODS[method]
    for prefix, family in _METHOD_PREFIXES.items():
        if method.startswith(prefix) and len(method) > len(prefix):
            return family
    return CONTROL


def task_categories(method: str, modality: str | None) -> list[str]:
    family = family_of(method)
    return list(family.task_categories or _MODALITY_TASKS.get(modality or "", ("image-to-text",)))


# not models: what the model field holds for methods that use no trained weights (they have no
# revision either: `has_weights`)
NO_MODEL_LICENSES = {
    "human": "n/a: the source dataset's own captions (see the source license)",
    "wordnet": "WordNet 3.0 license (permissive, https://wordnet.princeton.edu/license-and-commercial-use)",
    # the `model` names mat-plus's rule-based generators record (augment/generators/): no model card to check
    "torchvision.transforms.v2": "n/a: rule-based, no model (torchvision's transforms, bsd-3-clause)",
    "sample-world-renderer": "n/a: rule-based, no model (mat-plus's sample-world renderer, apache-2.0)",
    "sample-world-describer": "n/a: rule-based, no model (mat-plus's sample-world describer, apache-2.0)",
    "none": "n/a: rule-based, no model",
}

# Hub license ids of the models mat-plus uses or suggests, by model id (compared without case).
# Taken from each model's card; anything not here reads "unknown, check the model card".
MODEL_LICENSES = {
    "compvis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2-base": "openrail++",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "salesforce/blip-image-captioning-base": "bsd-3-clause",
    "salesforce/blip-image-captioning-large": "bsd-3-clause",
    "salesforce/blip2-opt-2.7b": "mit",
    "nlpconnect/vit-gpt2-image-captioning": "apache-2.0",
    "microsoft/git-base-coco": "mit",
    "microsoft/git-large-coco": "mit",
    "google/flan-t5-small": "apache-2.0",
    "google/flan-t5-base": "apache-2.0",
    "google/flan-t5-large": "apache-2.0",
    "google-t5/t5-small": "apache-2.0",
    "google-t5/t5-base": "apache-2.0",
    "t5-small": "apache-2.0",
    "t5-base": "apache-2.0",
    "humarin/chatgpt_paraphraser_on_t5_base": "openrail",
    "bert-base-uncased": "apache-2.0",
    "google-bert/bert-base-uncased": "apache-2.0",
    "roberta-base": "mit",
    "openai/clip-vit-base-patch32": "mit",
    "openai/clip-vit-base-patch16": "mit",
    "openai/clip-vit-large-patch14": "mit",
    **NO_MODEL_LICENSES,
}

_TINY_LICENSE = "n/a: random-weight test model built locally by mat-plus (`augment save-tiny`)"


def model_license(model: str | None) -> str:
    if not model:
        return "n/a: rule-based, no model"
    key = model.strip().lower()
    if key in MODEL_LICENSES:
        return MODEL_LICENSES[key]
    from augment.tiny import is_tiny_name

    if is_tiny_name(key):  # a folder named tiny-... holds a model of its own
        return _TINY_LICENSE
    return UNKNOWN_MODEL_LICENSE


def has_weights(model: str | None) -> bool:
    """Whether a pool's `model` names trained weights (which have a revision), not a rule-based tool."""
    return bool(model) and model.strip().lower() not in NO_MODEL_LICENSES


def model_url(model: str | None) -> str | None:
    """The Hub page of a model id `org/name`; None for aliases and local paths."""
    if not isinstance(model, str) or not model or model.startswith((".", "/", "~")):
        return None
    parts = model.split("/")
    return f"https://huggingface.co/{model}" if len(parts) == 2 and all(parts) else None


# ----------------------------------------------------------------------------- citations

MATPLUS_BIBTEX = """@software{{mat_plus,
  title   = {{mat-plus: 1:N augmentation pools and multimodal adversarial training for CLIP-style models}},
  author  = {{{{mat-plus contributors}}}},
  year    = {{{year}}},
  version = {{{version}}},
  note    = {{Python package mat-plus}}
}}"""

PAPERS = {
    "eda": """@inproceedings{wei-zou-2019-eda,
  title     = {{EDA}: Easy Data Augmentation Techniques for Boosting Performance on Text Classification Tasks},
  author    = {Wei, Jason and Zou, Kai},
  booktitle = {Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing and the 9th International Joint Conference on Natural Language Processing (EMNLP-IJCNLP)},
  pages     = {6382--6388},
  year      = {2019},
  doi       = {10.18653/v1/D19-1670}
}""",
    "stable-diffusion": """@inproceedings{rombach2022high,
  title     = {High-Resolution Image Synthesis with Latent Diffusion Models},
  author    = {Rombach, Robin and Blattmann, Andreas and Lorenz, Dominik and Esser, Patrick and Ommer, Bj{\\"o}rn},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {10684--10695},
  year      = {2022}
}""",
    "sdedit": """@inproceedings{meng2022sdedit,
  title     = {{SDEdit}: Guided Image Synthesis and Editing with Stochastic Differential Equations},
  author    = {Meng, Chenlin and He, Yutong and Song, Yang and Song, Jiaming and Wu, Jiajun and Zhu, Jun-Yan and Ermon, Stefano},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "blip": """@inproceedings{li2022blip,
  title     = {{BLIP}: Bootstrapping Language-Image Pre-training for Unified Vision-Language Understanding and Generation},
  author    = {Li, Junnan and Li, Dongxu and Xiong, Caiming and Hoi, Steven},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {162},
  pages     = {12888--12900},
  year      = {2022}
}""",
}


def method_papers(method: str, model: str | None) -> list[str]:
    """BibTeX entries of the papers behind a method (and its model, where that is the method)."""
    papers = []
    if method == "eda":
        papers.append(PAPERS["eda"])
    if method in ("t2i-sd", "t-i2i-sd"):
        papers.append(PAPERS["stable-diffusion"])
    if method == "t-i2i-sd":  # img2img is SDEdit's noising-then-denoising
        papers.append(PAPERS["sdedit"])
    if method.startswith("i2t-") and _is_blip_v1(model):
        papers.append(PAPERS["blip"])
    return papers


def _is_blip_v1(model: str | None) -> bool:
    name = (model or "").lower()
    return "blip" in name and "blip2" not in name and "blip-2" not in name


def matplus_bibtex(version: str, year: str) -> str:
    return MATPLUS_BIBTEX.format(version=version, year=year)
