"""Attacks on the tiny CLIP trained on the sample world: budgets, batching, attack losses, registry."""
from __future__ import annotations

import pytest
import torch

from train.attacks import (
    ATTACK_NAMES,
    SGA,
    BertAttack,
    CoAttack,
    NoAttack,
    PGD,
    SepAttack,
    SynonymAttack,
    build_attack,
)
from augment.words import split_chunk
from train.attacks.base import contrastive_loss
from train.attacks.multimodal import resized_views
from train.attacks.substitutes import MASK_WORD, SubstituteSource
from train.attacks.text import greedy_search, plan_search, substitute_words, substitution_loss

EPS = 2 / 255
FAST_PGD = dict(eps=EPS, steps=3, step_size=1 / 255)


@pytest.fixture(scope="module")
def victim(trained_bundle):
    return trained_bundle


@pytest.fixture(scope="module")
def mlm():
    from augment.registry import load_mlm

    model, tokenizer = load_mlm("tiny-mlm")
    return model, tokenizer, "tiny-mlm"


@pytest.fixture(scope="module")
def batch(trained_bundle, sample_world_dir):
    """6 test images with 2 captions each: (pixels [6, 3, 64, 64], captions, image_of_text)."""
    from augment.sources import load_source, select_split

    rows = select_split(load_source(str(sample_world_dir))[0], "test").select(range(6))
    pixels = torch.stack([trained_bundle.preprocess_eval(row["image"]) for row in rows])
    captions = [c for row in rows for c in row["captions"][:2]]
    image_of_text = torch.arange(6).repeat_interleave(2)
    return pixels, captions, image_of_text


def changed_positions(original: str, adversarial: str) -> int:
    before, after = original.split(), adversarial.split()
    assert len(before) == len(after), "a substitution must keep the number of words"
    return sum(a != b for a, b in zip(before, after))


def pair_similarity(victim, images, texts, image_of_text) -> float:
    with torch.no_grad():
        return float((victim.encode_image(images)[image_of_text] * victim.encode_text(texts)).sum(-1).mean())


# ----------------------------------------------------------------------------- words


def test_chunk_keeps_punctuation_and_case():
    from augment.wordnet import STOP_WORDS

    chunk = split_chunk('"Dog,', possessive=True)
    assert tuple(chunk) == ('"', "Dog", ",")
    assert chunk.replaceable(STOP_WORDS)
    assert chunk.replaced_by("cat") == '"Cat,'
    assert split_chunk("RED").replaced_by("blue") == "BLUE"
    # one capital letter is sentence case, not an acronym (a mutation dropping the length test passed every test,
    # audit CH: "X" was then replaced by "CROSS")
    assert split_chunk("X").replaced_by("cross") == "Cross"
    assert not split_chunk("the").replaceable(STOP_WORDS)  # stop word
    assert not split_chunk("3.5").replaceable(STOP_WORDS)
    assert split_chunk("t-shirt.").core == "t-shirt"
    assert split_chunk("man's", possessive=True).replaced_by("woman") == "woman's"
    assert split_chunk("man's").core == "man's"  # EDA's split keeps the possessive in the word
    # a curly apostrophe's possessive too: since words of any script are words (cfb07db), "dog\u2019s" is one,
    # and it was replaced whole ("cat", the possessive lost) where "dog's" became "cat's"
    assert split_chunk("Man\u2019s", possessive=True).replaced_by("woman") == "Woman\u2019s"


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("budget", [1, 2])
def test_bert_attack_respects_word_budget(victim, mlm, batch, budget):
    pixels, captions, image_of_text = batch
    attack = BertAttack(victim, mlm=mlm, top_k=5, budget=budget)
    result = attack(pixels, captions, image_of_text)
    assert torch.equal(result.images, pixels)
    changes = result.info["words_changed"]
    assert len(result.texts) == len(captions)
    for original, adversarial, change in zip(captions, result.texts, changes):
        assert changed_positions(original, adversarial) == len(change) <= budget
    assert sum(map(len, changes)) > 0
    assert pair_similarity(victim, pixels, result.texts, image_of_text) < pair_similarity(victim, pixels, captions, image_of_text)


def test_multimodal_attacks_respect_both_budgets(victim, mlm, batch):
    pixels, captions, image_of_text = batch
    clean_similarity = pair_similarity(victim, pixels, captions, image_of_text)
    for cls in (SepAttack, CoAttack, SGA):
        attack = cls(victim, image_attack=PGD(victim, **FAST_PGD), text_attack=BertAttack(victim, mlm=mlm, top_k=5))
        result = attack(pixels, captions, image_of_text)
        assert result.images.shape == pixels.shape
        assert float((result.images - pixels).abs().max()) <= EPS + 1e-6, cls.name
        assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
        for original, adversarial, change in zip(captions, result.texts, result.info["words_changed"]):
            assert changed_positions(original, adversarial) == len(change) <= 1
        assert pair_similarity(victim, result.images, result.texts, image_of_text) < clean_similarity, cls.name


def test_pgd_lowers_similarity_within_budget(victim, batch):
    pixels, captions, image_of_text = batch
    result = PGD(victim, **FAST_PGD)(pixels, captions, image_of_text)
    assert result.texts == captions
    assert float((result.images - pixels).abs().max()) <= EPS + 1e-6
    assert pair_similarity(victim, result.images, captions, image_of_text) < pair_similarity(victim, pixels, captions, image_of_text)


def test_zero_budget_changes_nothing(victim, mlm, batch):
    pixels, captions, image_of_text = batch
    result = BertAttack(victim, mlm=mlm, budget=0)(pixels, captions, image_of_text)
    assert result.texts == captions


# ----------------------------------------------------------------------------- batching


def one_at_a_time(attack, victim, texts, image_emb, image_of_text):
    """Reference BERT-Attack loop: one caption, one masked text, one candidate per forward pass."""
    out = []
    with torch.no_grad():
        for index, text in enumerate(texts):
            tokens = [split_chunk(t, possessive=True) for t in text.split()]
            substitutes = attack.source.substitutes([tokens])[0]
            clean = victim.encode_text([text])[0]

            def score(candidate: str) -> float:
                embedding = victim.encode_text([candidate])[0]
                if attack.guide == "text":
                    return float(1 - embedding @ clean)
                return float(-(embedding @ image_emb[image_of_text[index]]))

            importance = {}
            for position in sorted(substitutes):
                masked = text.split()
                masked[position] = tokens[position].prefix + MASK_WORD + tokens[position].suffix
                importance[position] = float(1 - victim.encode_text([" ".join(masked)])[0] @ clean)
            current, current_score, changes = text.split(), score(text), 0
            for position in sorted(substitutes, key=lambda p: -importance[p]):
                if changes >= attack.budget:
                    break
                best_token = None
                for word in substitutes[position]:
                    candidate = current.copy()
                    candidate[position] = tokens[position].replaced_by(word)
                    candidate_score = score(" ".join(candidate))
                    if candidate_score > current_score:
                        current_score, best_token = candidate_score, candidate[position]
                if best_token is not None:
                    current[position] = best_token
                    changes += 1
            out.append(" ".join(current) if changes else text)
    return out


@pytest.mark.parametrize("guide", ["image", "text"])
def test_batched_text_attack_equals_one_at_a_time(victim, mlm, batch, guide):
    pixels, captions, image_of_text = batch
    texts = captions[:6] + ["Two shapes: a small, red circle!"]
    pairing = torch.cat([image_of_text[:6], torch.tensor([0])])
    attack = BertAttack(victim, mlm=mlm, top_k=4, budget=2, guide=guide, text_batch=7)
    with torch.no_grad():
        image_emb = victim.encode_image(pixels)
    batched, _ = attack.perturb(texts, image_emb, pairing)
    assert batched == one_at_a_time(attack, victim, texts, image_emb, pairing)
    # substitutes found for all captions in one MLM pass equal those found one caption at a time
    tokens = [[split_chunk(t, possessive=True) for t in text.split()] for text in texts]
    assert attack.source.substitutes(tokens) == [attack.source.substitutes([t])[0] for t in tokens]


class FixedSubstitutes(SubstituteSource):
    """Substitutes from a table (word -> substitutes): the search alone, no model."""

    name = "fixed"

    def __init__(self, table):
        self.table = table

    def substitutes(self, captions):
        return [{p: self.table[c.core] for p, c in enumerate(caption) if c.core in self.table} for caption in captions]


def count_x(texts, owners):
    return torch.tensor([float(t.count("x")) for t in texts])


def test_substitutes_kept_from_token_ids_as_from_their_words(mlm):
    """The cached per-id filter keeps what `_keep` keeps of the decoded predictions, for every id of
    the masked LM's vocabulary (special tokens, pieces, stop words, case and the word itself)."""
    from train.attacks.substitutes import MaskedLMSubstitutes

    model, tokenizer, _ = mlm
    source = MaskedLMSubstitutes(model, tokenizer)
    ids = list(range(len(tokenizer)))
    special = set(tokenizer.all_special_ids)

    def decoded(i):
        piece = tokenizer.convert_ids_to_tokens(i)
        return None if i in special or piece.startswith("##") else tokenizer.convert_tokens_to_string([piece]).strip()

    words = [decoded(i) for i in ids]
    kept_any = False
    for original in ("dog", "Dog", "the", "red", "zebra", "f\u00e4hrt", "\u0441\u043e\u0431\u0430\u043a\u0430", "\u4e00\u53ea"):
        for chunk in (ids, ids[::-1], ids[: 40] * 2):  # every id, another order, repeated ids
            expected = source._keep([words[i] for i in chunk], original)
            assert source._keep_ids(chunk, original) == expected, original
            kept_any = kept_any or bool(expected)
    assert kept_any and source._keep_ids(ids, "the") != source._keep_ids(ids, "red")


def test_an_accented_word_gets_substitutes_a_run_of_chinese_none(mlm):
    """Under the project protocol the masked LM is asked about every word of a script written with spaces
    ("f\u00e4hrt" was skipped as non-A-Z until 2026-12-06), not about a Chinese run (a phrase, no word)."""
    from train.attacks.substitutes import MaskedLMSubstitutes

    model, tokenizer, _ = mlm
    source = MaskedLMSubstitutes(model, tokenizer, top_k=20)
    caption = [split_chunk(w, possessive=True) for w in "ein roter ball f\u00e4hrt \u4e00\u53ea\u72d7".split()]
    found = source.substitutes([caption])[0]
    assert 3 in found and found[3] and 4 not in found
    assert all(word.isascii() for word in found[3])  # the tiny MLM's words: Latin, as the word


def test_the_masked_lm_head_runs_only_where_predictions_are_read(mlm, monkeypatch):
    """`masked_lm_top_k` runs BERT's prediction head on the hidden states of the tokens it is asked
    about, not on every token: the same top-k as the whole model's logits there, and the
    substitutes of every caption the same as with the whole forward."""
    import train.attacks.substitutes as substitutes_module
    from augment.words import split_chunk
    from train.attacks.substitutes import MaskedLMSubstitutes, masked_lm_top_k

    model, tokenizer, _ = mlm
    texts = ["a small red cube left of two blue spheres", "the big green cylinder", "an overlooked yellowish thing"]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    rows, tokens = [0, 0, 1, 2, 2], [1, 4, 2, 3, 1]
    head_rows = []
    hook = model.cls.register_forward_hook(lambda module, args, output: head_rows.append(args[0].shape[0]))
    try:
        scores, ids = masked_lm_top_k(model, inputs, rows, tokens, 7)
    finally:
        hook.remove()  # the masked LM is the session's
    assert head_rows == [len(rows)]  # five hidden states through the head, not 3 x the padded length
    with torch.no_grad():
        full = model(**inputs).logits[rows, tokens].topk(7, dim=-1)
    torch.testing.assert_close(scores, full.values)
    assert torch.equal(ids, full.indices)

    captions = [[split_chunk(word) for word in text.split()] for text in texts * 3]
    for pieces in ("first", "combine"):
        source = MaskedLMSubstitutes(model, tokenizer, pieces=pieces, batch_size=4)
        found = source.substitutes(captions)
        monkeypatch.setattr(substitutes_module, "ROW_WISE_HEADS", ())  # the whole forward, every token's logits
        assert source.substitutes(captions) == found and any(found)
        monkeypatch.undo()


def test_a_word_written_as_a_special_token_is_never_replaced(mlm):
    """was: "[SEP]" had its core replaced ("[SNOW]"): to a BERT-tokenized victim it is its separator."""
    from augment.words import split_chunk
    from train.attacks.substitutes import MaskedLMSubstitutes

    model, tokenizer, _ = mlm
    source = MaskedLMSubstitutes(model, tokenizer)
    assert not any(source.replaceable(split_chunk(word)) for word in ("[SEP]", "[CLS]", "<|endoftext|>", "<s>"))
    assert source.replaceable(split_chunk("(sofa)")) and source.replaceable(split_chunk("sofa,"))


def test_one_greedy_search_order_ties_budget_and_rounds():
    source = FixedSubstitutes({"red": ["xa", "xb", "rexx"], "ball": ["box"], "blue": ["bl"], "dog": ["dox"]})
    texts = ["red ball", "blue dog", "a cat"]
    # positions by importance (higher first, ties in word order), then the best substitute that beats the text
    assert substitute_words(texts, source, count_x) == (
        ["rexx ball", "blue dox", "a cat"],
        [[{"position": 0, "from": "red", "to": "rexx"}], [{"position": 1, "from": "dog", "to": "dox"}], []])
    by_length = lambda masked, owners: torch.tensor([-float(len(m)) for m in masked])  # noqa: E731 (shorter word first)
    assert substitute_words(texts, source, count_x, importance=by_length)[0] == ["red box", "blue dox", "a cat"]
    # ties: the first candidate reaching the best score; budget 2 takes a second word in a later round
    tied = FixedSubstitutes({"red": ["xa", "xb"], "ball": ["box"]})
    assert substitute_words(["red ball"], tied, count_x, budget=2)[0] == ["xa box"]
    # two positions in one round: only the best candidate of the round is kept, then no position is left
    assert substitute_words(["red ball"], tied, count_x, budget=2, words_per_round=2)[0] == ["xa ball"]
    assert substitute_words(texts, source, count_x, budget=0) == (texts, [[], [], []])
    # a score that depends on the other texts re-scores the texts as they stand each round
    plan = plan_search(texts, source, count_x)
    accepted = []
    assert greedy_search(texts, plan, count_x, rescore=lambda: [9.0] * 3, on_accept=lambda o, c: accepted.append(o))[0] == texts
    assert accepted == []
    greedy_search(texts, plan, count_x, initial=[0.0] * 3, on_accept=lambda o, c: accepted.append(o))
    assert accepted == [0, 1]


def test_a_looking_ahead_search_finds_what_one_step_a_round_finds_in_fewer_rounds():
    """`fill` lets a round score the texts' next steps too; each text takes its steps in order and
    the first accepted candidate ends its round, so the texts and changes are those of one step a
    round (random tables, scores with ties, budgets 1-3, one or two positions a step). A coupled
    score (`rescore`) never looks ahead."""
    import random

    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(12)]
    fewer = 0
    for case in range(60):
        table = {w: [f"{w}s{k}" for k in range(rng.randint(1, 3))] for w in rng.sample(vocabulary, 7)}
        texts = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 5))]
        values = {}

        def score(candidates, owners, calls):  # each candidate's own score, with ties
            calls.append(len(candidates))
            return torch.tensor([values.setdefault(c, float(rng.randint(0, 4))) for c in candidates])

        source = FixedSubstitutes(table)
        plan = plan_search(texts, source, lambda masked, owners: torch.tensor([float(len(m)) for m in masked]))
        budget, per_round = rng.randint(1, 3), rng.randint(1, 2)
        initial = [1.0] * len(texts)
        rounds_one = []
        one_step = greedy_search(texts, plan, lambda c, o: score(c, o, rounds_one), budget, per_round, initial=initial)
        for fill in (2, 5, 1000):
            rounds_ahead = []
            ahead = greedy_search(texts, plan, lambda c, o: score(c, o, rounds_ahead), budget, per_round,
                                  initial=initial, fill=fill)
            assert ahead == one_step, (case, fill)
            assert len(rounds_ahead) <= len(rounds_one)
            fewer += len(rounds_ahead) < len(rounds_one)
    assert fewer >= 10  # the look-ahead saved rounds in many cases (18 of 180 runs)
    # a score reading the other texts: one step a round whatever the fill
    plan = plan_search(["red ball", "blue dog"], FixedSubstitutes({"red": ["rx"], "ball": ["bx"], "dog": ["dx"]}), count_x)
    calls = [[], []]
    for fill, made in zip((1, 1000), calls):
        greedy_search(["red ball", "blue dog"], plan, lambda c, o, made=made: made.append(len(c)) or count_x(c, o),
                      budget=2, rescore=lambda: [0.0, 0.0], fill=fill)
    assert calls[0] == calls[1] and len(calls[0]) == 2


def test_round_fill_follows_the_pass_cost_of_the_device():
    from train.attacks.text import one_step_rounds, round_fill

    assert round_fill("cpu") == 16 and round_fill("cuda") == 256 and round_fill("cuda", text_batch=64) == 64
    with one_step_rounds():  # the benchmarks' baseline: the search as before it looked ahead
        assert round_fill("cuda") == 1
    assert round_fill("cuda") == 256


def test_contrastive_substitution_loss_is_exact():
    generator = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    image_emb, text_emb, candidates = unit(4, 8), unit(7, 8), unit(5, 8)
    image_of_text = torch.tensor([0, 0, 1, 2, 2, 2, 1])  # image 3 has no caption
    owners = torch.tensor([0, 3, 3, 6, 4])
    fast = substitution_loss(candidates, owners, image_emb, text_emb, image_of_text, "contrastive", 10.0)
    for c, owner in enumerate(owners.tolist()):
        replaced = text_emb.clone()
        replaced[owner] = candidates[c]
        assert float(fast[c]) == pytest.approx(float(contrastive_loss(image_emb, replaced, image_of_text, 10.0)), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_contrastive_substitution_loss_is_float32_under_autocast(dtype):
    """Was: under autocast (MAT's inner text attack runs in the training step's: `--precision amp` on a GPU,
    amp_bf16) its products ran in half precision, which rounded a candidate's loss about as far as one
    substitution moves it: another best candidate than float32's, or a tie (no substitution). The CPU's
    autocast stands for a GPU's here; the embeddings are unit vectors sharing a direction, as CLIP's do."""
    generator = torch.Generator().manual_seed(0)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    common, specific = torch.randn(64, generator=generator), torch.randn(16, 64, generator=generator)
    image_emb = unit(common + specific + torch.randn(16, 64, generator=generator))
    text_emb = unit(common + 0.3 * specific + 1.2 * torch.randn(16, 64, generator=generator))
    owners = torch.arange(16).repeat_interleave(4)
    candidates = unit(text_emb[owners] + 0.15 * unit(torch.randn(64, 64, generator=generator)))
    image_of_text = torch.arange(16)
    expected = substitution_loss(candidates, owners, image_emb, text_emb, image_of_text, "contrastive", 100.0)
    with torch.autocast("cpu", dtype=dtype):
        scores = substitution_loss(candidates, owners, image_emb, text_emb, image_of_text, "contrastive", 100.0)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


def test_contrastive_text_attack_raises_the_batch_loss(victim, mlm, batch):
    pixels, captions, image_of_text = batch
    attack = BertAttack(victim, mlm=mlm, top_k=5, loss="contrastive")
    result = attack(pixels, captions, image_of_text)
    with torch.no_grad():
        image_emb = victim.encode_image(pixels)
        before = contrastive_loss(image_emb, victim.encode_text(captions), image_of_text, victim.logit_scale)
        after = contrastive_loss(image_emb, victim.encode_text(result.texts), image_of_text, victim.logit_scale)
    assert float(after) > float(before)


# ----------------------------------------------------------------------------- pieces and registry


def test_resized_views_keep_shape_range_and_gradient():
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    views = resized_views(images, (0.5, 1.5), noise_std=0.05, generator=torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == [images.shape] * 2
    assert all(float(v.detach().min()) >= 0 and float(v.detach().max()) <= 1 for v in views)
    sum(v.sum() for v in views).backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_synonym_attack_uses_wordnet(victim, batch, wordnet_ready):
    pixels, captions, image_of_text = batch
    result = SynonymAttack(victim, top_k=5)(pixels, captions, image_of_text)
    for original, adversarial, change in zip(captions, result.texts, result.info["words_changed"]):
        assert changed_positions(original, adversarial) == len(change) <= 1
    assert any(result.info["words_changed"])


def test_a_word_budget_of_zero_loads_no_masked_lm(victim, batch, monkeypatch):
    # sep, co-attack and sga with --word-budget 0 loaded the masked LM their text part never reads (a download, or an
    # offline failure, for nothing); the text part now says it has no source
    import augment.registry
    from train.eval_report import settings_markdown

    def no_loading(*args, **kwargs):
        raise AssertionError("a masked LM was loaded")

    monkeypatch.setattr(augment.registry, "load_mlm", no_loading)
    pixels, captions, image_of_text = batch
    for name in ("bert-attack", "sep", "co-attack", "sga"):
        attack = build_attack(name, victim, mlm="no-such-mlm", seed=0, budget=0, **FAST_PGD)
        result = attack(pixels, captions, image_of_text)
        assert result.texts == list(captions), name
        text = attack.params().get("text", attack.params())
        assert text["source"] == "none" and text["budget"] == 0, name
    report = {"settings": {"seed": 0}, "attacks": {"sep": {"params": attack.params()}}}
    assert "- `sep` (its text part off: budget 0): " in settings_markdown(report)[-1]
    with pytest.raises(AssertionError, match="a masked LM was loaded"):  # a budget still loads it
        build_attack("sep", victim, mlm="no-such-mlm", budget=1)


def test_a_word_budget_of_zero_reads_no_wordnet_either(victim, batch, monkeypatch):
    # sep, co-attack and sga with --text-candidates wordnet and a word budget of 0 (the study's eval.text_candidates
    # wordnet with eval.word_budget 0, its validation too) still built WordNet's source: WordNet was required (offline
    # without it, a stop after training) and eval.md said "source wordnet" for a text part that never ran, where the
    # masked LM's said "source none" (grounding's and captioning's text attacks already loaded neither)
    import augment.wordnet

    def no_wordnet():
        raise AssertionError("WordNet was required")

    monkeypatch.setattr(augment.wordnet, "require_wordnet", no_wordnet)
    pixels, captions, image_of_text = batch
    for name in ("sep", "co-attack", "sga"):
        attack = build_attack(name, victim, seed=0, budget=0, candidates="wordnet", **FAST_PGD)
        assert attack(pixels, captions, image_of_text).texts == list(captions), name
        assert attack.params()["text"]["source"] == "none", name
    with pytest.raises(AssertionError, match="WordNet was required"):  # a budget still reads it
        build_attack("sep", victim, budget=1, candidates="wordnet")


def test_build_attack_names_and_options(victim, mlm):
    built = {name: build_attack(name, victim, mlm=mlm, seed=0, **FAST_PGD) for name in ATTACK_NAMES if name != "synonym"}
    assert isinstance(built["clean"], NoAttack)
    assert {name: attack.modality for name, attack in built.items()} == {
        "clean": "none", "pgd": "image", "bert-attack": "text", "sep": "multimodal", "co-attack": "multimodal", "sga": "multimodal",
    }
    sga = build_attack("sga", victim, mlm=mlm, scales=(0.5, 2.0), top_k=3, budget=2)
    assert sga.params()["scales"] == [0.5, 2.0]
    assert sga.text_attack.params()["top_k"] == 3 and sga.text_attack.budget == 2
    assert build_attack("co-attack", victim, mlm=mlm, alpha=1.5).params()["alpha"] == 1.5
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("fgsm", victim)


def test_build_attack_gives_the_text_attacks_their_words_per_round(victim, mlm):
    """Guards `build_attack`'s text options: `words_per_round` reaches BERT-Attack and SGA's text step
    (the contract test with 3 words a round checks budgets only, which the default 1 also keeps)."""
    assert build_attack("bert-attack", victim, mlm=mlm, words_per_round=3).params()["words_per_round"] == 3
    assert build_attack("sga", victim, mlm=mlm, words_per_round=3).text_attack.words_per_round == 3


def test_seeded_pgd_is_reproducible(victim, batch):
    pixels, captions, image_of_text = batch
    first = build_attack("pgd", victim, seed=3, eps=EPS, steps=1)(pixels, captions, image_of_text).images
    second = build_attack("pgd", victim, seed=3, eps=EPS, steps=1)(pixels, captions, image_of_text).images
    assert torch.equal(first, second)


def test_attack_noise_on_a_cpu_is_the_seeded_generators_own_draw():
    """PGD's start and SGA's view noise come from `noise_like`: on the CPU the generator's own draw,
    so CPU attacks keep the numbers they had (and the images' dtype)."""
    from train.attacks.draws import noise_like

    images = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    for normal, draw in ((False, torch.rand), (True, torch.randn)):
        expected = draw(images.shape, generator=torch.Generator().manual_seed(7)).double()
        drawn = noise_like(images, torch.Generator().manual_seed(7), normal=normal)
        assert drawn.dtype == torch.float64 and torch.equal(drawn, expected)
    torch.manual_seed(1)
    unseeded = noise_like(images)
    torch.manual_seed(1)
    assert torch.equal(unseeded, torch.rand(images.shape).double())


def test_a_generator_on_another_device_seeds_one_on_the_images_device(monkeypatch):
    """A GPU attack draws on the GPU from a generator seeded by the attack's CPU generator (one
    number taken from it), not on the host: the same seed gives the same derived generator."""
    from train.attacks import draws

    made = []

    class Recorded:  # stands in for torch.Generator(device="cuda"), absent here
        def __init__(self, device):
            self.device = device

        def manual_seed(self, seed):
            made.append((self.device, seed))
            return self

    cpu, same, other = (torch.Generator().manual_seed(seed) for seed in (5, 5, 6))
    fresh = torch.Generator().manual_seed(5).get_state()
    monkeypatch.setattr(draws.torch, "Generator", Recorded)  # draws' torch is torch: made before this line
    derived = draws.generator_on(torch.device("cuda", 0), cpu)
    assert isinstance(derived, Recorded) and derived.device == torch.device("cuda", 0)
    draws.generator_on(torch.device("cuda", 0), same)
    draws.generator_on(torch.device("cuda", 0), other)
    assert made[0] == made[1] and made[0][1] != made[2][1]
    assert not torch.equal(cpu.get_state(), fresh)  # one number taken from the attack's generator
    assert draws.generator_on(torch.device("cpu"), cpu) is cpu and draws.generator_on(torch.device("cuda", 0), None) is None


def test_text_shortcuts_leave_the_adversarial_captions_unchanged(victim, mlm, batch):
    """`fast_text` (trimmed tower, per-word token ids) is exact: the attacks' captions are the same
    as with open_clip's own tokenizer and full-context text tower."""
    pixels, captions, image_of_text = batch
    attack = SGA(victim, image_attack=PGD(victim, random_start=False, **FAST_PGD),
                 text_attack=BertAttack(victim, mlm=mlm, top_k=5), noise_std=0.0)
    fast = attack(pixels, captions, image_of_text)
    victim.fast_text = False
    try:
        slow = attack(pixels, captions, image_of_text)
    finally:
        victim.fast_text = True
    assert fast.texts == slow.texts and fast.texts != captions
    torch.testing.assert_close(fast.images, slow.images, rtol=0, atol=1 / 255)


def test_text_prefix_cache_leaves_the_adversarial_captions_unchanged(victim, mlm, batch, monkeypatch):
    """The word-substitution search encodes its candidates from the clean captions' keys and values
    (`models.text_prefix`) where the victim has the cache; the captions and changes are those of
    encoding each candidate whole."""
    from models.text_prefix import TextPrefixCache

    pixels, captions, image_of_text = batch
    attack = BertAttack(victim, mlm=mlm, top_k=5, budget=2)
    used = []
    original = TextPrefixCache.encode
    monkeypatch.setattr(TextPrefixCache, "encode", lambda self, *a, **k: used.append(1) or original(self, *a, **k))
    cached = attack(pixels, captions, image_of_text)
    assert used, "the search did not use the prefix cache"
    monkeypatch.setattr(type(victim), "text_prefix_cache", lambda self, references, batch_size=None: None)
    whole = attack(pixels, captions, image_of_text)
    assert cached.texts == whole.texts and cached.texts != captions
    assert cached.info == whole.info


def test_hf_clip_text_prefix_cache_leaves_the_adversarial_captions_unchanged(mlm, batch):
    """The same on transformers' CLIP (random tiny twin): the cache on, then off (`fast_text`)."""
    from models import load_model

    victim = load_model("tiny-hf-clip")
    pixels, captions, image_of_text = batch
    attack = BertAttack(victim, mlm=mlm, top_k=5, budget=2)
    assert victim.text_prefix_cache(captions) is not None
    cached = attack(pixels, captions, image_of_text)
    victim.fast_text = False
    whole = attack(pixels, captions, image_of_text)
    assert cached.texts == whole.texts and cached.texts != captions
    assert cached.info == whole.info
