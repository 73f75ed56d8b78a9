"""`augment generate --method M --source SRC --out POOL --n N`: build a pool."""
from __future__ import annotations

import sys

from augment.arguments import folder_path, non_negative_int, positive_int
from augment.commands.common import add_progress_arguments, add_source_arguments, read_source, source_meta
from augment.generators import available_modules, build_generator, check_options_read, method_names, method_options
from augment.generators.base import run_generation
from augment.loading import SHARD_WORKERS, add_workers_argument

MODEL_METHODS = "t2t-<model>, i2t-<model>, t2i-sd, t-i2i-sd"  # the methods that read the model options (generators.MODEL_OPTIONS)
# options every method reads (the run's, the source's); the others are method options, each read
# only by the methods whose `options_read` names it, and refused for the rest
COMMON_OPTIONS = frozenset({
    "method", "source", "image_root", "source_split", "skip_bad", "skip_report", "validate", "allow_outside_root",
    "csv_img_key", "csv_caption_key", "csv_separator", "out", "n", "seed", "split", "limit", "shard_size", "device", "overwrite", "no_progress", "workers",
})


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", allow_abbrev=False, help="build a 1:N augmentation pool",
        description="Build a pool with one method. Re-running the same command resumes a killed run.",
    )
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(method_names())}")
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, type=folder_path, help="pool folder to write (resumed if it holds the same pool)")
    parser.add_argument("--n", "--augmentations", dest="n", type=positive_int, default=4,
                        help="augmentations per source caption or image (default 4); spell it --augmentations "
                             "under torchrun, whose parser takes --n for one of its own options")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="base seed of every row's random draws (default 0)")
    parser.add_argument("--split", default="train", help="source split to augment (default train; 'all' for every split)")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first LIMIT source images (quick subset)")
    parser.add_argument("--shard-size", type=positive_int, default=256, help="source images per written shard (the resume unit; default 256)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="model batch size (default 16; " + MODEL_METHODS + ")")
    parser.add_argument("--model", default=None, help="generator model: registry alias, Hub id, local folder or tiny-* twin (default: the method's; " + MODEL_METHODS + ")")
    parser.add_argument("--model-revision", default=None, help="Hub revision (branch, tag or commit) of --model (" + MODEL_METHODS + ")")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="model weights' dtype, fp16/bf16 on GPU (default fp32; " + MODEL_METHODS + ")")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cuda when available, else cpu, "
                        "for the methods that load a model (" + MODEL_METHODS + "); cpu for the others; "
                        "under accelerate launch on GPUs: each process's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pool at --out")
    add_progress_arguments(parser)
    add_workers_argument(parser, used_at_most=SHARD_WORKERS)
    for module in available_modules():
        group = parser.add_argument_group(f"{module.__name__.rsplit('.', 1)[-1]} options")
        module.add_arguments(group)
    # SIGTERM (kill, timeout, a scheduler) stops it as Ctrl-C does: one line, exit 143, finished shards kept
    parser.set_defaults(func=run, option_default=parser.get_default, sigterm_interrupts=True,
                        option_flags={a.dest: a.option_strings[0] for a in parser._actions if a.option_strings})


def options_given(args) -> set[str]:
    """The method options (a generator group's or a model option) set to other than their default."""
    return {dest for dest in method_options() if getattr(args, dest) != args.option_default(dest)}


def run(args) -> int:
    # before anything is read or launched: an option the method ignores would silently change nothing
    check_options_read(args.method, args, options_given(args), flags=args.option_flags)
    from augment.devices import resolve_device

    model_method = loads_model(args)
    # one line naming --device, not "cannot load captioner ..." (the model loads later)
    args.device = resolve_device(args.device, default=generation_device(args, model_method))
    state = distributed_state(args)
    if state is not None:
        print(f"generate: process {state.process_index + 1} of {state.num_processes} ({state.backend})", file=sys.stderr)
    finished = False
    if args.overwrite:  # its shards are not resumed: a replaced pool stays whole until the new one is complete
        args.interrupted = (f"with --overwrite, a pool at {args.out} stays until the new one is complete; run again "
                            "to build the new one from the start")
    try:
        source, report = read_source(args)
        generator = build_generator(args.method, args)
        meta = run_generation(
            generator, source, args.out, n=args.n, seed=args.seed, split=args.split, limit=args.limit,
            shard_size=args.shard_size, overwrite=args.overwrite, source_name=str(args.source),
            progress=not args.no_progress, source_meta=source_meta(args, report.format), workers=args.workers,
            device_type=torch_device_type(args.device) if model_method else None, **process_share(state),
        )
        finished = True
    finally:
        if state is not None:
            from train.launch import end_process_group

            end_process_group(finished)
    if meta is not None:
        print(f"pool {args.out}: {meta['num_rows']} rows from {meta['source_items']} source images ({args.method})")
        if meta["num_rows"] == 0:
            print(f"warning: {args.out}: {args.method} wrote no rows from {meta['source_items']} source images "
                  f"({EMPTY_POOL_HINTS.get(args.method, 'captions too short to change? a filter too strict?')}); "
                  "training and scoring refuse an empty pool",
                  file=sys.stderr)
    return 0


# why a method may write no rows, where the generic guess would mislead
EMPTY_POOL_HINTS = {"i2t-human": "it pairs an image with its OTHER captions: images with one caption have none"}


def loads_model(args) -> bool:
    """Whether `--method` loads a model (t2t-, i2t-, t2i-sd, t-i2i-sd: it reads the model options)."""
    from augment.generators import MODEL_OPTIONS, module_for

    return bool(MODEL_OPTIONS & set(module_for(args.method).options_read(args.method, args)))


def torch_device_type(device: str) -> str:
    import torch

    return torch.device(device).type


def generation_device(args, model_method: bool) -> str:
    """The default --device: for a method that loads a model, the kind of device a pool already at
    --out was sampled on (a resume goes on there: another kind samples other rows), else
    `default_device()` (cuda when torch sees a GPU); cpu for the others (eda, i2t-human, imgaug,
    ...), which use no device: under torchrun a GPU default made their processes talk over NCCL,
    one GPU each, and refused more processes than GPUs, where they ran over gloo on the CPU."""
    from augment.devices import default_device

    if not model_method:
        return "cpu"
    if not args.overwrite:
        from pathlib import Path

        from augment.errors import MatPlusError
        from augment.pool import holds_pool, read_pool_meta

        try:
            recorded = read_pool_meta(Path(args.out)).get("device_type") if holds_pool(Path(args.out)) else None
        except (OSError, ValueError, MatPlusError):  # not a pool, or a damaged pool.json: the writer says so
            recorded = None
        if isinstance(recorded, str) and recorded:
            return recorded
    return default_device()


def distributed_state(args):
    """accelerate's PartialState when launched with several processes (torchrun, accelerate launch
    on GPUs), else None (a single process needs no process group).

    The launcher's environment is checked first (train/launch.py, shared with the trainer): with
    `--device cpu` or no GPU the processes talk over gloo; otherwise each takes its own GPU
    (`state.device`, e.g. cuda:LOCAL_RANK) in place of `--device`. A launch that would silently
    run one process (accelerate launch of several CPU processes) stops with one line.
    """
    from train.launch import check_launch_environment, check_process_group

    plan = check_launch_environment(cpu=str(args.device).startswith("cpu"), cpu_option="--device cpu")
    if not plan.distributed:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=plan.cpu)
    check_process_group(plan, state.num_processes)
    if not plan.cpu:
        args.device = str(state.device)
    return state


def process_share(state) -> dict:
    """run_generation's rank, world_size and barrier for a PartialState; none for one process."""
    if state is None:
        return {}
    return {"rank": state.process_index, "world_size": state.num_processes, "barrier": state.wait_for_everyone}
