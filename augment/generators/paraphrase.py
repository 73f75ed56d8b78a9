"""`t2t-<model>`: paraphrases of each caption from a transformers language model.

`<model>` (or `--model`) is anything `registry.load_paraphraser` takes: an alias
(`t5-paraphraser`), `default` (`registry.DEFAULT_MODELS["paraphraser"]`), a Hub id, a local
folder or `tiny-paraphraser`.

* seq2seq models (T5, BART, Pegasus...) get `--prompt-template` (default
  "paraphrase: {caption}", the input format of common T5 paraphrasers);
* causal (decoder-only) instruction models get an instruction, wrapped in the tokenizer's chat
  template when it has one (thinking off: `enable_thinking=False`); only the newly generated
  tokens are read (the prompt is dropped), as an answer (`answer_of`: a reasoning block, lead-in
  lines such as "Here is the new caption:", a "New caption:" label and emphasis dropped), and
  only its first line.

Captions are batched (`--batch-size` captions per `generate` call) and sampled with nucleus
sampling (`--top-p`, `--temperature`, `--sampling-top-k` 0 = off) and nothing else: beam search, penalties
and other decoding settings a model's generation_config.json (or legacy config.json) saves are
overridden (`PLAIN_DECODING`). Each caption gets up to N paraphrases
that differ from each other and from the caption (compared in Unicode NFKC, case folded, whitespace and final
punctuation normalised); empty outputs are dropped, and captions still short of N are sampled
again, up to `--max-rounds` rounds. Rows of a caption that ended with fewer than N carry a
provenance note.

Determinism: before each round of a batch, torch is seeded from the identity of the batch's
first caption and the round (`row_seed`), so re-running the same command gives identical rows.
The rows depend on how captions are grouped, so they are deterministic for a fixed
`--batch-size` (which is therefore part of the pool's parameters: resuming with another batch
size is refused).

The sampling options defined here (`--top-p`, `--sampling-top-k`, `--temperature`, `--max-new-tokens`,
`--max-rounds`) are shared with `i2t-<model>` captioners (argparse allows one definition).
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

from augment.arguments import non_negative_int, positive_fraction, positive_int, positive_number
from augment.errors import MatPlusError
from augment.generators import MODEL_OPTIONS
from augment.generators.base import Generator, row_seed

PREFIXES = ["t2t-"]
ROLE = "paraphraser"

SEQ2SEQ_TEMPLATE = "paraphrase: {caption}"
INSTRUCTION_TEMPLATE = (
    "Rewrite this image caption in other words, keeping its meaning. "
    "Answer with the new caption only.\nCaption: {caption}"
)
# causal models without a chat template see the instruction, then this cue
PLAIN_CUE = "\nNew caption:"


# ----------------------------------------------------------------------------- shared sampling


@dataclass(frozen=True)
class Sampling:
    """Nucleus-sampling settings shared by paraphrasers and captioners."""

    top_p: float = 0.9
    top_k: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 40
    max_rounds: int = 3

    @classmethod
    def from_args(cls, args) -> "Sampling":
        defaults = cls()
        return cls(**{name: getattr(args, name, value) for name, value in asdict(defaults).items()})

    def generate_kwargs(self, num_return_sequences: int) -> dict[str, Any]:
        """`generate` arguments for exactly the recorded sampling: these settings, then every other
        decoding setting at its neutral value (see `PLAIN_DECODING`)."""
        return {
            **plain_decoding(),
            "do_sample": True,
            "top_p": self.top_p,
            "top_k": self.top_k,  # 0 disables top-k: nucleus sampling alone
            "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
            "num_return_sequences": num_return_sequences,
        }


# What a checkpoint's generation_config.json (or a legacy config.json) may save besides its token
# ids, and `generate` would apply unasked and unrecorded: beam search (facebook/bart-* save
# num_beams 4, tuner007/pegasus_paraphrase 8: `--n` above it is a ValueError, below it beam
# sampling, not the nucleus sampling pools record), beam groups, penalties, n-gram bans, length
# floors, other truncations, dict outputs. Passed explicitly, as arguments override the saved
# defaults; a model that saves none of them samples exactly as before. Token ids (bos, eos, pad,
# decoder start, BART's forced bos/eos) stay the model's: they are how its outputs are read.
PLAIN_DECODING: dict[str, Any] = {
    "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "length_penalty": 1.0,
    "early_stopping": False, "penalty_alpha": None, "dola_layers": None, "guidance_scale": None,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None,
    "min_length": 0, "min_new_tokens": None, "exponential_decay_length_penalty": None,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "top_h": None,
    "return_dict_in_generate": False,
}


@functools.cache
def plain_decoding() -> dict[str, Any]:
    """`PLAIN_DECODING` less the settings this transformers version lacks (`generate` refuses an
    argument it does not know; a setting it lacks cannot be saved either). Cached, so callers
    copy it into their own dict and never change it."""
    from transformers import GenerationConfig

    known = GenerationConfig()
    return {name: value for name, value in PLAIN_DECODING.items() if hasattr(known, name)}


SAMPLING_OPTIONS = frozenset(field.name for field in fields(Sampling))


def add_sampling_arguments(group) -> None:
    defaults = Sampling()
    group.add_argument("--top-p", type=positive_fraction, default=defaults.top_p,
                       help=f"t2t-/i2t-: nucleus sampling mass (default {defaults.top_p})")
    # --sampling-top-k first: `train`'s and `train eval`'s --top-k is substitutes per word; --top-k stays
    group.add_argument("--sampling-top-k", "--top-k", dest="top_k", type=non_negative_int, default=defaults.top_k,
                       metavar="K", help="t2t-/i2t-: also keep only the k likeliest tokens (default 0: off)")
    group.add_argument("--temperature", type=positive_number, default=defaults.temperature,
                       help=f"t2t-/i2t-: sampling temperature (default {defaults.temperature})")
    group.add_argument("--max-new-tokens", type=positive_int, default=defaults.max_new_tokens,
                       help=f"t2t-/i2t-: longest generated text in tokens (default {defaults.max_new_tokens})")
    group.add_argument("--max-rounds", type=positive_int, default=defaults.max_rounds,
                       help=f"t2t-/i2t-: sampling rounds to reach N distinct outputs (default {defaults.max_rounds})")


# ----------------------------------------------------------------------------- shared helpers


def normalised(text: str) -> str:
    """The form outputs are deduplicated in: Unicode NFKC, case folded, single spaces, no final punctuation
    (CJK and full-width marks too). NFKC, because a model's tokenizer normalises what it echoes:
    sentencepiece models (T5, Pegasus) give a decomposed source caption (NFD, "e\u0301te\u0301") back
    composed, which counted as a new paraphrase of it; "一只狗在跑。" and "一只狗在跑" as two outputs."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).rstrip(" .!?。")


# marks stripped from either end of an output line, whether or not the other end has its partner
_LOOSE_QUOTES = "\"'“”` "
# quotes other languages' typography wraps a whole answer in: removed as a pair only, so that a final
# apostrophe (’ in "the dogs’") stays. „…“ is German's; ‘…’, «…», ‹…›, 「…」, 『…』 British, French, CJK
_QUOTE_PAIRS = {"‘": "’", "«": "»", "‹": "›", "„": "“", "「": "」", "『": "』"}


def _unquoted(line: str) -> str:
    """`line` without the quotes wrapping it, nested or mixed (`"«…»"`)."""
    while True:
        before = line
        if len(line) >= 2 and _QUOTE_PAIRS.get(line[0]) == line[-1]:
            line = line[1:-1]
        line = line.strip(_LOOSE_QUOTES)
        if line == before:
            return line


def clean_output(text: str) -> str:
    """First non-empty line, whitespace collapsed, wrapping quotes removed (`_LOOSE_QUOTES` at either
    end, `_QUOTE_PAIRS` around the line): a model echoing the caption in «…» or ‘…’ gave it back as
    a new output."""
    for line in text.splitlines():
        line = _unquoted(" ".join(line.split()))
        if line:
            return line
    return ""


# what instruction models wrap an answer in: a reasoning block (Qwen3, DeepSeek-R1 write it as text,
# not as special tokens; some templates open it in the prompt, so the output holds only its end),
# a lead-in line such as "Here is the new caption:", a label repeating the cue, markdown emphasis
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_EMPHASIS = re.compile(r"\*+|(?<!\w)_+|_+(?!\w)")  # **bold**, __bold__; not a word_with_underscores
_ANSWER_LABEL = re.compile(r"^(?:new|rewritten|paraphrased)?\s*caption\s*:\s*", re.I)
_LEAD_IN = re.compile(r"^(?:here|sure|okay|ok|certainly|of course)\b|\b(?:caption|paraphrase|rewrit\w*|version)\b", re.I)


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt leaves a reasoning block open (the template wrote its `<think>`)."""
    return prompt.rfind(_THINK_OPEN) > prompt.rfind(_THINK_CLOSE)


def answer_of(text: str, thinking_open: bool = False) -> str:
    """A causal instruction model's answer as one caption: what follows its reasoning block (none
    when the block never closed: no answer, empty; `thinking_open`: the prompt opened it), lead-in
    lines ("Here is the new caption:") skipped, a leading "New caption:" label and markdown
    emphasis removed, then `clean_output`. A first line that ends in a colon but reads as no
    lead-in ("A sign that reads:") is the caption's own."""
    if thinking_open:
        text = _THINK_OPEN + text
    if _THINK_OPEN in text or _THINK_CLOSE in text:
        before, closed, after = text.rpartition(_THINK_CLOSE)
        text = after if closed else ("" if _THINK_OPEN in text else text)
    lines = [_EMPHASIS.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    while lines and lines[0].endswith(":") and _LEAD_IN.search(lines[0]):
        lines.pop(0)
    return clean_output(_ANSWER_LABEL.sub("", lines[0])) if lines else ""


class DistinctCollector:
    """Collects up to `n` distinct outputs for one input, refusing the input's own text."""

    def __init__(self, n: int, refuse: Iterable[str] = ()):
        self.n = n
        self.seen = {normalised(t) for t in refuse}
        self.kept: list[tuple[str, int]] = []  # (text, round it came from)

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.n

    def offer(self, text: str, round_index: int) -> None:
        key = normalised(text)
        if self.full or not key or key in self.seen:
            return
        self.seen.add(key)
        self.kept.append((text, round_index))


def batch_seed(seed: int, first_image_id: str, first_index: int, round_index: int) -> int:
    """The torch seed of one sampling round of a batch, from its first element's identity."""
    return row_seed(seed, f"batch:{first_image_id}", first_index, round_index)


def shortfall_note(kept: int, n: int, rounds: int, what: str) -> dict[str, str]:
    if kept >= n:
        return {}
    return {"note": f"only {kept} of {n} distinct {what} after {rounds} sampling rounds"}


def chunked(sequence: list, size: int) -> Iterable[list]:
    for start in range(0, len(sequence), size):
        yield sequence[start:start + size]


def model_id(name: str, role: str) -> str:
    """The id recorded in provenance: an alias resolved to its Hub id, other names as given."""
    from augment import registry

    if name == "default":
        return str(registry.DEFAULT_MODELS[role])
    target = registry.ALIASES.get(name, name)
    return target if isinstance(target, str) else name


def model_name_for(method: str, prefix: str, args) -> str:
    return getattr(args, "model", None) or method[len(prefix):]


# ----------------------------------------------------------------------------- the generator


class ParaphraseGenerator(Generator):
    # 2 (2026-12-03): the model's saved num_beams and penalties overridden by the recorded
    # sampling settings (BART/Pegasus sampled beams before). 3 (2026-12-06): outputs deduplicated after
    # NFKC and case folding, a final '。' ignored (`normalised`): a composed echo of a decomposed source
    # caption refused, other paraphrases kept for captions whose outputs differ only so (non-ASCII ones)
    # (bdaf9f2 was written at 08:25 on another branch; it reached the history, rebased, at 09:01:28: its commit time)
    # 4 (2026-12-08): an output wrapped in paired quotes of other typographies (‘…’, «…», „…“, 「…」) unwrapped
    # (`clean_output`), so a caption echoed in them is no new output. Raised with the change itself, so no
    # code wrote these rows as recipe 3: no `recipe_since` (a pool recording 3 is always an earlier one's)
    recipe, recipe_since = 4, None  # 3: bdaf9f2; 2: f0f7e70, 818e86e
    modality = "text"

    def __init__(self, method: str, model_name: str, *, sampling: Sampling = Sampling(),
                 prompt_template: str | None = None, batch_size: int = 16, device: str = "cpu",
                 dtype: str = "fp32", revision: str | None = None):
        self.method = method
        self.model = model_id(model_name, ROLE)
        self.model_revision = revision
        self.sampling = sampling
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.model_name = model_name
        if prompt_template is not None and "{caption}" not in prompt_template:
            raise MatPlusError(f"--prompt-template must contain {{caption}}; got {prompt_template!r}")
        self.lm = None
        self._load()  # now, so a bad model name fails before any pool is written
        self.prompt_template = prompt_template or (SEQ2SEQ_TEMPLATE if self.kind == "seq2seq" else INSTRUCTION_TEMPLATE)

    def _load(self) -> None:
        from augment.registry import load_paraphraser

        self.lm, self.tokenizer, self.kind = load_paraphraser(
            self.model_name, self.device, self.dtype, revision=self.model_revision)

    def params(self) -> dict:
        return {"kind": self.kind, "prompt_template": self.prompt_template, "batch_size": self.batch_size,
                "dtype": self.dtype, **asdict(self.sampling)}

    # -- prompts

    def prompt(self, caption: str) -> str:
        text = self.prompt_template.replace("{caption}", caption)  # not format(): other braces stay
        if self.kind == "seq2seq":
            return text
        if getattr(self.tokenizer, "chat_template", None):
            # enable_thinking: Qwen3-style templates otherwise let the model reason at length first
            # (read by the templates that know it, unused by others)
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False,
                enable_thinking=False)
        return text + PLAIN_CUE

    # -- sampling

    def sample(self, captions: list[str], per_caption: int) -> list[list[str]]:
        """`per_caption` cleaned samples for each caption (torch must be seeded by the caller)."""
        import torch

        prompts = [self.prompt(c) for c in captions]
        # chat templates already hold the special tokens they need
        add_special = not (self.kind == "causal" and getattr(self.tokenizer, "chat_template", None))
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                                 add_special_tokens=add_special)
        # only these two: BERT-style tokenizers add token_type_ids, which T5/GPT models refuse
        input_ids = encoded["input_ids"].to(self.lm.device)
        attention_mask = encoded["attention_mask"].to(self.lm.device)
        with torch.inference_mode():
            out = self.lm.generate(input_ids=input_ids, attention_mask=attention_mask,
                                   **self.sampling.generate_kwargs(per_caption),
                                   pad_token_id=self.tokenizer.pad_token_id)
        if self.kind == "causal":  # left-padded prompts: the new tokens follow the input
            out = out[:, input_ids.shape[1]:]
        decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        if self.kind == "causal":  # row i answers prompt i // per_caption
            texts = [answer_of(t, opens_thinking(prompts[i // per_caption])) for i, t in enumerate(decoded)]
        else:
            texts = [clean_output(t) for t in decoded]
        return [texts[i * per_caption:(i + 1) * per_caption] for i in range(len(captions))]

    def paraphrase_batch(self, batch: list[tuple[dict, int, str]], n: int, seed: int) -> list[DistinctCollector]:
        import torch

        collectors = [DistinctCollector(n, refuse=[caption]) for _, _, caption in batch]
        first_item, first_index, _ = batch[0]
        for round_index in range(self.sampling.max_rounds):
            todo = [i for i, c in enumerate(collectors) if not c.full]
            if not todo:
                break
            torch.manual_seed(batch_seed(seed, first_item["image_id"], first_index, round_index))
            samples = self.sample([batch[i][2] for i in todo], n)
            for i, texts in zip(todo, samples):
                for text in texts:
                    collectors[i].offer(text, round_index)
        return collectors

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        if self.lm is None:  # released by close() at the end of an earlier run
            self._load()
        captions = [(item, c, text) for item in items for c, text in enumerate(item["captions"])]
        rows, done = [], 0
        for batch in chunked(captions, self.batch_size):
            for (item, c, _), collector in zip(batch, self.paraphrase_batch(batch, n, seed)):
                note = shortfall_note(len(collector.kept), n, self.sampling.max_rounds, "paraphrases")
                for k, (text, round_index) in enumerate(collector.kept):
                    rows.append(self.row(item, c, k, seed, caption=text, model=self.model, kind=self.kind,
                                         prompt_template=self.prompt_template, round=round_index,
                                         top_p=self.sampling.top_p, temperature=self.sampling.temperature,
                                         **note))
            done += len(batch)
            self.shard_progress(done, len(captions), "captions")
        return rows

    def close(self) -> None:
        release_model(self, "lm")


def release_model(generator: Generator, attribute: str) -> None:
    """Drop a generator's model and give its GPU memory back."""
    if getattr(generator, attribute, None) is None:
        return
    setattr(generator, attribute, None)
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- command line


def add_arguments(group) -> None:
    group.add_argument("--prompt-template", default=None,
                       help=f"t2t-: prompt with {{caption}} (default {SEQ2SEQ_TEMPLATE!r} for seq2seq models, "
                            "an instruction in the chat template for causal ones)")
    add_sampling_arguments(group)


def options_read(method: str, args) -> set[str]:
    return {"prompt_template", *SAMPLING_OPTIONS, *MODEL_OPTIONS}


def build(method: str, args) -> Generator:
    return ParaphraseGenerator(
        method, model_name_for(method, PREFIXES[0], args), sampling=Sampling.from_args(args),
        prompt_template=getattr(args, "prompt_template", None), batch_size=getattr(args, "batch_size", 16),
        device=getattr(args, "device", "cpu"), dtype=getattr(args, "dtype", "fp32"),
        revision=getattr(args, "model_revision", None),
    )
