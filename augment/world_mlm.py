"""`world-mlm`: a small BERT masked LM trained on the sample world's captions, offline.

The tiny twin `tiny-mlm` has random weights, so BERT-Attack with it proposes arbitrary words and
most attacked captions become false: nothing like BERT-Attack with bert-base on real captions.
`world-mlm` is the same class (`BertForMaskedLM`, the tiny word-level tokenizer) trained with the
masked-LM objective on the captions of the train split of a sample world, so it proposes
in-distribution words (other colours, shapes, sizes, synonyms) as bert-base does on Flickr30k;
the world's truth checker then says how many of its substitutions keep a caption true.

It is trained on a world with its own seed (`TRAIN_WORLD`: seed 1, whereas the bundled world and
the study use seed 0), so it has seen the captioning grammar but none of the scenes, train or
test, of a seed-0 world. Building takes well under a minute on one core; like the tiny twins it
is written with `save_pretrained` under `$MATPLUS_TINY_DIR/world-mlm/` with a fingerprint of its
recipe (a changed recipe rebuilds it) and always loaded back from there.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from augment import tiny
from augment.progress import quiet_progress_bars
from augment.seeds import cpu_torch_seeded

WORLD_MLM = "world-mlm"
# bump when the builder changes in a way the recipe below does not show
RECIPE_VERSION = 1
TRAIN_WORLD = {"seed": 1, "n": 4000, "captions_per_scene": 5}  # its train split: 3,000 scenes, 15,000 captions
MODEL_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": tiny.WORD_MAX_LENGTH,
}
TRAINING = {"steps": 600, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "mask_probability": 0.15, "seed": 0}


def train_captions(world: dict | None = None) -> list[str]:
    """The captions of the train split of the sample world `world` (no images are rendered)."""
    from augment.world.captions import captions_for_scene
    from augment.world.scene import sample_scene
    from augment.world.writer import item_rng, split_sizes

    world = world or TRAIN_WORLD
    n_train = split_sizes(world["n"], 0.125, 0.125)
    n_train = world["n"] - n_train["val"] - n_train["test"]
    captions = []
    for index in range(n_train):  # the train split is the world's first images
        scene = sample_scene(item_rng(world["seed"], index, "scene"))
        captions += captions_for_scene(scene, item_rng(world["seed"], index, "captions"), world["captions_per_scene"])
    return captions


def recipe() -> dict:
    return {
        "name": WORLD_MLM, "recipe_version": RECIPE_VERSION, "world": TRAIN_WORLD, "bert": MODEL_CONFIG,
        "training": TRAINING,
        "word_vocabulary_sha256": hashlib.sha256("\n".join(tiny.word_vocabulary()).encode()).hexdigest(),
    }


def fingerprint() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def build_world_mlm(out_dir: str | os.PathLike, log=None) -> dict:
    """Train world-mlm into the empty folder `out_dir`; returns its training summary."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    out_dir = Path(out_dir)
    tokenizer = tiny.build_word_tokenizer(out_dir)
    captions = train_captions()
    encoded = tokenizer(captions, truncation=True, max_length=tiny.WORD_MAX_LENGTH)["input_ids"]
    t = TRAINING
    with cpu_torch_seeded(t["seed"]):
        model = BertForMaskedLM(BertConfig(**MODEL_CONFIG, vocab_size=len(tokenizer), pad_token_id=tiny.PAD_ID))
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=t["mask_probability"], return_tensors="pt")
        optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / t["warmup_steps"]) * max(0.0, 1 - s / t["steps"]))
        order = torch.randperm(len(encoded)).tolist()
        model.train()
        losses = []
        for step in range(t["steps"]):
            start = (step * t["batch_size"]) % len(order)
            picked = [order[(start + i) % len(order)] for i in range(t["batch_size"])]
            batch = collator([{"input_ids": encoded[i]} for i in picked])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if log and (step + 1) % 200 == 0:
                log(f"[world-mlm] step {step + 1}/{t['steps']}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    window = max(1, min(50, len(losses) // 4))
    summary = {"captions": len(captions), "first_loss": sum(losses[:window]) / window,
               "final_loss": sum(losses[-window:]) / window}
    manifest = {"name": WORLD_MLM, "fingerprint": fingerprint(), "recipe": recipe(), "training_summary": summary,
                "role": "mlm", "note": "trained on sample-world captions (augment.world_mlm); for the world only"}
    (out_dir / tiny.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return summary


def is_current(folder: Path) -> bool:
    manifest = tiny.read_manifest(folder)
    return bool(manifest) and manifest.get("fingerprint") == fingerprint()


def world_mlm_dir(name: str = WORLD_MLM, log=None) -> Path:
    """world-mlm's folder in the tiny cache, trained and saved there on first use (`tiny.cached_build`)."""

    def build(tmp: Path) -> None:
        (log or tiny.log.info)(f"[world-mlm] training a masked LM on sample-world captions into "
                               f"{tiny.tiny_cache_root() / name} (once)")
        with quiet_progress_bars():
            build_world_mlm(tmp, log=log)

    # training takes minutes on a CPU: a second process waits longer for the lock than for a tiny twin
    return tiny.cached_build(name, is_current, build, what="model", timeout=1200)
