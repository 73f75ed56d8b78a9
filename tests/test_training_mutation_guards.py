"""Guards found by audit BU's mutation audit of training (losses, methods, the 1:N data, the trainer,
the tasks' training losses): each test kills a plausible bug that every other test let through.

Expected values are computed here by a plain formula, not by the code under test; models are
stubs of a few lines, so each test runs in well under a second unless it says otherwise.
"""
from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from models.base import EncoderOutput, TextTokens


# ----------------------------------------------------------------------------- losses


def test_fare_loss_sums_the_squared_difference_over_dimensions_and_averages_over_rows():
    """Guards FARE's loss: ||adv - clean||_2^2 per image (a sum over the embedding), mean over the batch,
    not a mean over the embedding's dimensions (1/D of it: the logged loss and its gradient shrunk)."""
    from train.losses import fare_loss

    clean = torch.zeros(2, 3)
    adversarial = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]])  # squared distances 9 and 1
    assert float(fare_loss(adversarial, clean)) == pytest.approx(5.0)


def test_sigmoid_itc_loss_sums_over_captions_per_image_with_the_learnt_bias():
    """Guards SigLIP's loss: -1/N sum over every (image, caption) of log sigmoid(label (scale cos + bias)),
    not a mean over all N^2 pairs, and with the model's bias added to every logit."""
    from tasks.retrieval import RetrievalTask, itc_loss

    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    text = F.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    scale, bias, keys = torch.tensor(10.0), torch.tensor(-2.0), torch.tensor([0, 0, 1])
    model = types.SimpleNamespace(itc_loss="sigmoid", family="stub")
    loss = itc_loss(model, EncoderOutput(image, text, scale, bias), keys, RetrievalTask())
    expected = 0.0
    for i in range(3):
        for j in range(3):
            label = 1.0 if keys[i] == keys[j] else -1.0
            logit = float(scale * image[i] @ text[j] + bias)
            expected -= math.log(1 / (1 + math.exp(-label * logit)))
    assert float(loss) == pytest.approx(expected / 3, rel=1e-5)


def test_softmax_itc_loss_spreads_each_rows_target_over_its_own_positives_on_a_non_square_batch():
    """Guards the multi-positive targets where positives are not symmetric (the attacks' contrastive loss: images
    against their captions): each image's target is 1/#its captions (a row's count, not the column's), each
    caption's 1/#its images, and an image without a caption in the batch adds 0 to the mean, not NaN."""
    from tasks.retrieval import softmax_itc_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, -2.0, 0.5]])
    positives = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # image 2 has no caption here
    by_image, by_caption = logits.log_softmax(1), logits.T.log_softmax(1)
    image_loss = -(0.5 * by_image[0, 0] + 0.5 * by_image[0, 1] + by_image[1, 2] + 0.0) / 3
    caption_loss = -(by_caption[0, 0] + by_caption[1, 0] + by_caption[2, 1]) / 3
    assert float(softmax_itc_loss(logits, positives)) == pytest.approx(float(image_loss + caption_loss) / 2, rel=1e-6)


def test_the_image_attack_loss_of_a_sigmoid_model_is_its_sigmoid_loss_with_its_bias():
    """Guards RetrievalTask.image_attack_loss for SigLIP: PGD maximises the sigmoid ITC loss the model trains
    with, its learnt bias added to every logit (not the softmax loss, not the logits without the bias)."""
    from tasks.retrieval import RetrievalTask

    generator = torch.Generator().manual_seed(2)
    image = F.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    text = F.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    keys = torch.tensor([0, 0, 1])
    model = types.SimpleNamespace(itc_loss="sigmoid", family="stub", logit_scale=torch.tensor(10.0),
                                  logit_bias_param=lambda: torch.tensor(-2.0), encode_tokens=lambda tokens: text,
                                  encode_image=lambda pixels: pixels)
    loss = RetrievalTask().image_attack_loss(model, None, keys)(image)
    labels = 2 * (keys.view(-1, 1) == keys.view(1, -1)).float() - 1
    expected = -F.logsigmoid(labels * (10.0 * image @ text.T - 2.0)).sum() / 3
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


# ----------------------------------------------------------------------------- ITM with hard negatives


def test_itm_hard_negatives_are_never_a_positive_column():
    """Guards the draw: positives (same key) are masked out before the softmax draw, however similar."""
    from tasks.retrieval import hard_negatives

    similarity = torch.tensor([[0.0, 30.0, 1.0, 1.0], [30.0, 0.0, 1.0, 1.0]])  # each row's most similar: a positive
    positives = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    drawn = torch.stack([hard_negatives(similarity, positives, generator) for _ in range(50)])
    assert set(drawn.flatten().tolist()) <= {2, 3}


def test_itm_scores_negative_captions_and_negative_images_labelled_by_their_keys(monkeypatch):
    """Guards ITM's three blocks: (image, its caption) matched, (image, drawn caption) and (drawn image,
    caption) labelled 1 only where the drawn row shares the key; the drawn images are the images'
    own draw, not the captions' indices."""
    import tasks.retrieval as retrieval

    draws = iter([torch.tensor([1, 2, 0]), torch.tensor([2, 0, 1])])  # captions per image, then images per caption
    monkeypatch.setattr(retrieval, "hard_negatives", lambda similarity, positives: next(draws))
    seen = {}

    class Matcher:
        def itm_logits(self, features, tokens):
            seen["features"], seen["ids"] = features, tokens.input_ids
            return torch.full((len(features),), 5.0)

    features = torch.arange(3.0).view(3, 1, 1).expand(3, 2, 4)  # image row r: all r
    ids = torch.arange(3).view(3, 1).expand(3, 4)  # caption row r: all r
    output = EncoderOutput(F.normalize(torch.ones(3, 4), dim=-1), F.normalize(torch.ones(3, 4), dim=-1),
                           torch.tensor(10.0), image_features=features)
    loss = retrieval.itm_loss(Matcher(), output, TextTokens(ids), torch.tensor([0, 0, 1]))
    assert seen["features"][:, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 2, 0, 1]
    assert seen["ids"][:, 0].tolist() == [0, 1, 2, 1, 2, 0, 0, 1, 2]
    # labels: matches 1 1 1; image 0 with caption 1 shares key 0 (1), the others 0; caption 1 with image 0 (1)
    labels = [1, 1, 1, 1, 0, 0, 0, 1, 0]
    expected = sum(F.softplus(torch.tensor(-5.0 if y else 5.0)).item() for y in labels) / 9
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_the_itm_term_is_a_local_term_of_the_retrieval_loss_under_several_processes(monkeypatch):
    """Guards RetrievalTask.loss: ITM covers this process's pairs only, so under 2 processes its gradient is
    halved (the trainer's backward multiplies by the world size), its logged value is not."""
    import tasks.retrieval as retrieval

    weight = torch.tensor(2.0, requires_grad=True)
    monkeypatch.setattr(retrieval, "itc_loss", lambda model, output, keys, task: torch.tensor(1.0))
    monkeypatch.setattr(retrieval, "itm_loss", lambda model, output, tokens, keys: weight * 3.0)

    class Fusion:
        has_itm = True

        def __call__(self, pixels, tokens, image_features):
            return None

    task = retrieval.RetrievalTask(rank=0, world_size=2, itm_weight=0.5)
    loss = task.loss(Fusion(), torch.zeros(2, 3, 4, 4), None, torch.arange(2))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1.0 + 0.5 * 6.0) and float(weight.grad) == pytest.approx(0.5 * 3.0 / 2)


# ----------------------------------------------------------------------------- momentum distillation


def _momentum_output(enqueued: list) -> tuple[EncoderOutput, dict]:
    """A training forward's output of 2 rows with a momentum provider: momentum embeddings and a queue of 2."""
    generator = torch.Generator().manual_seed(1)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    extras = {"image_emb_m": unit(2, 4), "text_emb_m": unit(2, 4), "image_queue": unit(2, 4), "text_queue": unit(2, 4),
              "queue_keys": torch.tensor([5, -100]), "alpha": 0.4,
              "enqueue": lambda image_m, text_m, keys: enqueued.append(keys.tolist())}
    output = EncoderOutput(unit(2, 4), unit(2, 4), torch.tensor(1 / 0.07), extras={"momentum": lambda: extras})
    return output, extras


def test_momentum_distilled_targets_soften_the_momentum_similarities_by_the_temperature():
    """Guards ALBEF's distillation targets: alpha softmax(sim_m / temperature) + (1 - alpha) positives /
    #positives, both directions against the batch and the queue (the targets' softmax on raw cosines is
    nearly uniform)."""
    from tasks.momentum_distillation import momentum_distilled_itc_loss

    output, m = _momentum_output([])
    keys, alpha, scale = torch.tensor([5, 6]), 0.25, 1 / 0.07
    loss = momentum_distilled_itc_loss(output, keys, alpha=alpha, enqueue=False)
    texts, images = torch.cat([m["text_emb_m"], m["text_queue"]]), torch.cat([m["image_emb_m"], m["image_queue"]])
    positives = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])  # key 5 is in the queue too
    spread = positives / positives.sum(1, keepdim=True)

    def cross_entropy(queries, queries_m, candidates):
        targets = alpha * (scale * queries_m @ candidates.T).softmax(1) + (1 - alpha) * spread
        return -((scale * queries @ candidates.T).log_softmax(1) * targets).sum(1).mean()

    expected = (cross_entropy(output.image_emb, m["image_emb_m"], texts)
                + cross_entropy(output.text_emb, m["text_emb_m"], images)) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_a_loss_only_inspected_leaves_the_momentum_queue_alone():
    """Guards `inspect`: the clean half of a step (a second chunk, or the clean loss computed without
    gradient) must not enqueue its momentum features; the trained forward does, once."""
    from tasks.retrieval import ITC_LOSSES, RetrievalTask

    task, enqueued = RetrievalTask(), []
    output, _ = _momentum_output(enqueued)
    model = types.SimpleNamespace(itc_loss="momentum-distilled")
    for inspecting in (True, False):
        task.inspecting = inspecting
        ITC_LOSSES["momentum-distilled"](model, output, torch.tensor([5, 6]), task)
    assert enqueued == [[5, 6]]


def test_the_retrieval_loss_passes_its_inspect_flag_to_the_momentum_queue():
    """Guards RetrievalTask.loss: `inspect` (the clean half of a step, a second chunk) reaches the momentum-distilled
    ITC loss, so only the trained forward enqueues its momentum features (the flag was set by hand above)."""
    from tasks.retrieval import RetrievalTask

    enqueued = []
    output, _ = _momentum_output(enqueued)

    class Momentum:
        has_itm, itc_loss = False, "momentum-distilled"

        def __call__(self, pixels, tokens, image_features):
            return output

    task = RetrievalTask()
    for inspect in (True, False, True):
        task.loss(Momentum(), torch.zeros(2, 3, 4, 4), None, torch.tensor([5, 6]), inspect=inspect)
    assert enqueued == [[5, 6]]


def test_the_task_forward_inspects_every_chunk_after_the_first():
    """Guards TaskForward: of the (adversarial, clean) chunks of one forward only the first trains state."""
    from tasks.base import TaskForward

    flags = []
    task = types.SimpleNamespace(loss=lambda model, pixels, tokens, keys, texts, inspect: flags.append(inspect)
                                 or pixels.sum())
    TaskForward(torch.nn.Identity(), task)(torch.zeros(4, 1), TextTokens(torch.zeros(4, 2, dtype=torch.long)),
                                            torch.arange(4), chunks=2, texts=list("abcd"))
    assert flags == [False, True]


def test_the_clean_loss_computed_without_gradient_is_only_inspected():
    """Guards MAT/TeCoA with --clean-weight 0: the clean loss, logged only, is computed with inspect=True."""
    from train.methods import TeCoAMethod

    calls = []
    task = types.SimpleNamespace(gradient_scale=1.0, loss=lambda model, pixels, tokens, keys, texts, inspect: calls.append(
        inspect) or pixels.mean())
    model = types.SimpleNamespace(tokenize=lambda texts: TextTokens(torch.zeros(len(texts), 3, dtype=torch.long)))
    ctx = types.SimpleNamespace(config=types.SimpleNamespace(clean_weight=0.0, pgd_steps=0, attack_eps=0.0), model=model,
                                task=task, forward=lambda pixels, tokens, keys, texts=None: (pixels.mean(),))
    batch = types.SimpleNamespace(pixels=torch.rand(2, 3, 4, 4), texts=["a", "b"], keys=torch.tensor([0, 1]))
    TeCoAMethod(ctx)(batch, 0)
    assert calls == [True]


def test_the_distillation_weight_ramps_up_over_the_first_epoch():
    """Guards ALBEF's alpha warm-up: alpha x min(1, step / steps per epoch), not alpha from the first step."""
    from tasks.retrieval import RetrievalTask

    task = RetrievalTask()
    model = types.SimpleNamespace(alpha=0.4, momentum_distillation=True)
    ramp = []
    for step in (0, 5, 10, 30):
        task.on_step(model, step, 10)
        ramp.append(task.distill_alpha)
    assert ramp == pytest.approx([0.0, 0.2, 0.4, 0.4])


def test_albef_enqueues_every_staged_batch_of_a_step_and_each_ones_last_rows():
    """Guards ALBEF's queue under --grad-accum: each micro step's staged batch is enqueued after the update,
    in order (not the first alone); a batch larger than the queue leaves its last rows, as a queue would.
    ALBEF's own methods on a queue of 6 rows (no encoders: loading tiny-albef takes seconds)."""
    from models.albef.model import AlbefModel

    size, dim = 6, 2
    model = types.SimpleNamespace(temp=torch.tensor(0.07), momentum_distillation=True, momentum=0.995, _staged=[],
                                  _momentum_pairs=lambda: [], image_queue=torch.zeros(size, dim),
                                  text_queue=torch.zeros(size, dim), idx_queue=torch.full((size,), -100),
                                  queue_ptr=torch.zeros(1, dtype=torch.long))
    model._enqueue = types.MethodType(AlbefModel._enqueue, model)
    for first in (0, 100):
        AlbefModel.stage_for_queue(model, torch.full((2, dim), float(first)), torch.zeros(2, dim),
                                   torch.arange(first, first + 2))
    AlbefModel.after_optimizer_step(model)
    assert model.idx_queue[:4].tolist() == [0, 1, 100, 101] and int(model.queue_ptr) == 4
    rows = torch.arange(size + 3)
    AlbefModel.stage_for_queue(model, rows[:, None].float().expand(-1, dim), torch.zeros(size + 3, dim), rows)
    AlbefModel.after_optimizer_step(model)
    assert sorted(model.idx_queue.tolist()) == sorted(model.image_queue[:, 0].tolist()) == list(range(3, size + 3))


# ----------------------------------------------------------------------------- MAT's inner attacks


def _recording_mat(order: str, calls: list):
    """A MATMethod whose text attack and PGD record what they are given (the text attack appends '!',
    PGD adds 1 to the pixels), over a forward that returns the pixels' mean."""
    from train.methods import MATMethod

    cfg = types.SimpleNamespace(inner_order=order, clean_weight=0.0)
    model = types.SimpleNamespace(tokenize=lambda texts: TextTokens(torch.tensor([[len(t)] for t in texts])),
                                  modules=lambda: [], eval=lambda: None)
    task = types.SimpleNamespace(gradient_scale=1.0, loss=lambda *args, **kw: torch.tensor(0.0))
    method = MATMethod.__new__(MATMethod)
    method.ctx = types.SimpleNamespace(config=cfg, model=model, task=task,
                                       forward=lambda pixels, tokens, keys, texts=None: (pixels.mean(),))
    method.cfg, method.accept = cfg, None

    def text_attack(pixels, texts, _):
        calls.append(("text", float(pixels.mean())))
        return types.SimpleNamespace(texts=[t + "!" for t in texts])

    def pgd(pixels, tokens, keys, texts):
        calls.append(("image", tokens.input_ids.view(-1).tolist(), list(texts)))
        return pixels + 1.0

    method.text_attack, method._pgd = text_attack, pgd
    return method


@pytest.mark.parametrize("order", ["text-image", "image-text", "alternate"])
def test_mat_attacks_each_modality_against_the_other_ones_attacked_form(order):
    """Guards MAT's inner order: text-image runs PGD against the ATTACKED captions; image-text searches
    words against the ADVERSARIAL images; alternate starts with text-image at step 0."""
    batch = types.SimpleNamespace(pixels=torch.zeros(2, 3, 4, 4), texts=["ab", "c"], keys=torch.tensor([0, 1]))
    for step in (0, 1):
        calls = []
        out = _recording_mat(order, calls)(batch, step)
        first = order if order != "alternate" else ("text-image", "image-text")[step]
        if first == "text-image":
            assert calls == [("text", 0.0), ("image", [3, 2], ["ab!", "c!"])]
        else:
            assert calls == [("image", [2, 1], ["ab", "c"]), ("text", 1.0)]
        assert out.adv_texts == ["ab!", "c!"] and float(out.adv_pixels.mean()) == 1.0


def test_fare_pulls_toward_the_frozen_models_clean_embedding(monkeypatch):
    """Guards FARE's target: the FROZEN original model's clean embedding, not the trained model's own."""
    import train.attacks
    from train.methods import FAREMethod

    monkeypatch.setattr(train.attacks, "pgd_linf", lambda pixels, loss, *args: pixels + 1.0)
    trained = types.SimpleNamespace(encode_image=lambda pixels, normalize=False: pixels.flatten(1),
                                    modules=lambda: [], eval=lambda: None)
    frozen = types.SimpleNamespace(encode_image=lambda pixels, normalize=False: torch.zeros(len(pixels), 3))
    cfg = types.SimpleNamespace(clean_weight=0.0, attack_eps=1.0, pgd_steps=1, pgd_step_size=1.0, random_start=False)
    ctx = types.SimpleNamespace(config=cfg, model=trained, frozen=frozen, pgd_generator=None,
                                forward=lambda pixels, image_embeddings: (pixels.flatten(1),))
    out = FAREMethod(ctx)(types.SimpleNamespace(pixels=torch.full((2, 3, 1, 1), 0.5)), 0)
    # adversarial embedding 1.5s against the frozen model's 0s (the trained model's own would be 0.5s: 3 and 0)
    assert float(out.robust_loss) == pytest.approx(3 * 1.5 ** 2) and float(out.clean_loss) == pytest.approx(3 * 0.5 ** 2)


# ----------------------------------------------------------------------------- the trainer's step


def test_the_optimizer_step_clips_the_gradient_norm_when_asked():
    """Guards --grad-clip-norm: the update is made with the gradient clipped to that norm first."""
    from train.trainer import Trainer

    weight = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([3.0, 4.0])  # norm 5
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(clip_grad_norm_=lambda params, norm: torch.nn.utils.clip_grad_norm_(list(params), norm)),
        cfg=types.SimpleNamespace(max_grad_norm=1.0), optimizer=torch.optim.SGD([weight], lr=1.0),
        scheduler=types.SimpleNamespace(step=lambda: None),
        model=types.SimpleNamespace(parameters=lambda: [weight], after_optimizer_step=lambda: None))
    Trainer._optimizer_step(trainer)
    assert weight.tolist() == pytest.approx([-0.6, -0.8])


def test_a_resume_with_fewer_processes_needs_no_random_states_of_the_processes_it_drops(tmp_path):
    """Guards the resume's check of the processes' random-state files: those of the processes this run has
    (min of the two world sizes), not every one the run had, which the resumed run never reads."""
    from train.checkpoint import STATE_DIR, _rng_state, load_training_state, save_tensors

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state_dir = tmp_path / STATE_DIR
    state_dir.mkdir()
    save_tensors(optimizer.state_dict(), state_dir / "optimizer.pt")
    save_tensors(scheduler.state_dict(), state_dir / "scheduler.pt")
    save_tensors(_rng_state(), state_dir / "rng-0.pt")  # the run had 2 processes; rng-1.pt is not copied
    load_training_state(tmp_path, optimizer=optimizer, scheduler=scheduler, scaler=None, rank=0, saved_world_size=2,
                        world_size=1)


@pytest.mark.parametrize("method, lock_image, lock_text, trained", [
    ("tecoa", False, True, {"image"}), ("mat", True, False, {"text"}), ("mat", False, False, {"image", "text"}),
    ("fare", False, False, {"image"})])
def test_the_locked_towers_are_frozen_and_fare_trains_the_image_tower_alone(method, lock_image, lock_text, trained):
    """Guards which parameters train: --lock-image and --lock-text (TeCoA's derived default) each freeze their
    tower; FARE, whose loss never reaches the text tower, trains the image tower only."""
    from train.trainer import Trainer

    towers = {"image": [torch.nn.Parameter(torch.zeros(1))], "text": [torch.nn.Parameter(torch.zeros(1))]}
    model = types.SimpleNamespace(tower_parameters=towers.__getitem__, parameters=lambda: towers["image"] + towers["text"])
    cfg = types.SimpleNamespace(method=method, lock_image=lock_image, lock_text=lock_text, grad_checkpointing=False)
    Trainer._set_trainable(types.SimpleNamespace(cfg=cfg), model)
    assert {tower for tower, params in towers.items() if params[0].requires_grad} == trained


# ----------------------------------------------------------------------------- validation


def test_the_summary_names_the_earlier_of_two_equal_validations_best_when_no_weights_are_kept(tmp_path):
    """Guards the summary's best without RUN/best: the highest robust score, a tie going to the EARLIER
    step (as `_is_best` keeps the earlier step's weights), not the later one."""
    import json

    from train.validation import ValidationSettings, Validator

    lines = [{"step": step, "robust": robust, "clean": 90.0, "attack": "clean"}
             for step, robust in ((0, 50.0), (2, 80.0), (4, 80.0), (6, 70.0))]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = Validator(tmp_path, None, ValidationSettings(every=2, attack="clean")).summary()
    assert summary["best"]["step"] == 2 and summary["best_weights"] is None


def test_in_training_validation_attacks_with_the_runs_attack_settings():
    """Guards validation's attack options: the run's --attack-eps, --pgd-steps, --word-budget and --top-k
    (a --top-k 3 run validated with the attack's default of candidates per word left --top-k out)."""
    from train.validation import validation_settings

    cfg = types.SimpleNamespace(val_attack="sga", val_segment_cjk="none", attack_eps=2 / 255, pgd_steps=3,
                                pgd_step_size=0.5 / 255, word_budget=2, top_k=3, val_frequency=5, mlm="some-mlm",
                                model="tiny-clip", task="retrieval", val_split="val", val_limit=8, seed=1)
    settings = validation_settings(cfg, 5)
    options = settings.attack_options
    assert {k: options[k] for k in ("eps", "steps", "step_size", "budget", "top_k", "mlm")} == {
        "eps": 2 / 255, "steps": 3, "step_size": 0.5 / 255, "budget": 2, "top_k": 3, "mlm": "some-mlm"}
    # and the run's own seed (audit BY: a seed fixed at 0 survived), split, limit, a batch no larger than the limit
    assert (settings.every, settings.seed, settings.split, settings.limit, settings.batch_size) == (5, 1, "val", 8, 8)


# ----------------------------------------------------------------------------- captioning and grounding


def test_the_captioning_reference_table_takes_text_views_not_pair_captions():
    """Guards MAT+'s captioning references: an image's source captions and its pools' TEXT rows; a pair
    row's caption describes the pair's new image, not the source image."""
    import numpy as np

    from tasks.captioning import references_from_train_data

    pool = types.SimpleNamespace(modality=["text", "pair", "image"], caption=["a red disc", "a blue disc", None],
                                 image_index=np.array([0, 0, 0]))
    data = types.SimpleNamespace(captions=[["a red circle"]], pools=[pool])
    assert references_from_train_data(data) == [["a red circle", "a red disc"]]


def test_grounding_pgd_lowers_the_match_of_each_row_with_its_expression():
    """Guards the sign of grounding's attack loss: PGD maximises MINUS the mean match logit."""
    from tasks.grounding import GroundingTask

    model = types.SimpleNamespace(image_features=lambda pixels: pixels, itm_logits=lambda features, tokens: features.sum(1))
    loss = GroundingTask.image_attack_loss(None, model, TextTokens(torch.zeros(2, 1, dtype=torch.long)), torch.arange(2))
    assert float(loss(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))) == pytest.approx(-3.0)


def test_grounding_positives_are_the_keys_and_equal_expressions_plus_what_the_checker_finds_true(monkeypatch):
    """Guards the grounding loss's labels: the world checker's true pairs are ADDED to the positives by key
    and by equal expression (their maximum), for ITC and ITM alike, not put in their place."""
    import tasks.grounding as grounding

    seen = []
    monkeypatch.setattr(grounding, "softmax_itc_loss", lambda logits, positives: seen.append(positives) or logits.sum())
    monkeypatch.setattr(grounding, "grounding_itm_loss", lambda model, output, tokens, positives, extra: seen.append(
        positives) or torch.tensor(0.0))
    task = grounding.GroundingTask(counterfactual_pairs=False)
    truth = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 1]])  # image 2 holds what expression 0 names too
    task.true_pairs = lambda keys, texts: truth

    class Model:
        itc_loss = "softmax"

        def __call__(self, pixels, tokens, image_features=False):
            return EncoderOutput(torch.eye(3), torch.eye(3), torch.tensor(1.0), image_features=torch.zeros(3, 1, 3))

    task.loss(Model(), torch.zeros(3, 3, 2, 2), TextTokens(torch.zeros(3, 1, dtype=torch.long)), torch.tensor([0, 0, 1]),
              ["a star", "a circle", "a square"])
    expected = [[1.0, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert [positives.tolist() for positives in seen] == [expected, expected]


def test_each_micro_steps_inner_attack_draws_its_own_random_start():
    """Guards a mutation (audit BX): the inner PGD generator's seed without the micro step passed every training
    test; every step's adversarial examples then started from one noise pattern."""
    from augment.seeds import derive_seed
    from train.trainer import Trainer

    trainer = types.SimpleNamespace(cfg=types.SimpleNamespace(seed=3), rank=1,
                                    context=types.SimpleNamespace(pgd_generator=torch.Generator()))
    seeds = []
    for micro_step in (4, 5):
        Trainer._seed_micro_step(trainer, micro_step)
        seeds.append(trainer.context.pgd_generator.initial_seed())
    assert seeds == [derive_seed(3, "pgd", 4, 1), derive_seed(3, "pgd", 5, 1)]
