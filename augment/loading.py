"""DataLoader plumbing shared by generation, scoring and evaluation: `--workers`, ordered prefetching.

Each reads items whose decoding (image files) is worth moving off the main process, in a fixed
order, and hands what a worker made of them (source rows, PIL images, preprocessed pixels) to a
model. So the loaders here batch with `collate_fn=as_list` (a list of what the workers returned:
no collation; the trainer's loaders, which build its batches' tensors, pin theirs) and keep
torch's order guarantee: the output is the same with 0 or N workers, so resume and the
1-vs-2-process equality of pools hold whatever `--workers` is.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence

from augment.arguments import non_negative_int
from augment.errors import MatPlusError, SourceError, first_line

MAX_DEFAULT_WORKERS = 8
PREFETCH_FACTOR = 2  # batches each worker keeps ready
SHARD_WORKERS = 2  # `augment generate`: at most this many processes decode shards ahead (see run_generation)


def available_cpus() -> int:
    """CPUs this process may use (its affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """CPUs this process may use, minus one for the main process, at most 8; 0 on one CPU."""
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() - 1))


def add_workers_argument(parser, used_at_most: int | None = None) -> None:
    """`--workers`; `used_at_most`: the command uses no more than that many, whatever is asked (said in the help)."""
    cap = f"; this command uses at most {used_at_most}" if used_at_most is not None else ""
    parser.add_argument("--workers", type=non_negative_int, default=default_workers(),
                        help="DataLoader worker processes that decode images ahead of the model "
                             f"(default: CPUs - 1, at most {MAX_DEFAULT_WORKERS}, here {default_workers()}; 0: decode inline{cap})")


def exit_with_parent(parent: int, _worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn` (bind the parent's pid with functools.partial): on Linux the
    kernel kills this worker when its parent dies (PR_SET_PDEATHSIG). torch's own check runs only
    while a worker waits for work, so a worker decoding or handing over a batch when its parent was
    killed with SIGKILL lived on, holding its memory (seen: 610 MB, for more than 20 minutes).

    The kernel's parent is the process that forked the worker: `parent` itself with the fork and
    spawn start methods, the fork server with `forkserver` (Python 3.14's default on Linux). The
    fork server does not end with `parent`: it waits for the end of a keep-alive pipe whose write
    end every worker it forked holds, so the kernel's signal would never come. There a thread
    watches `parent`'s sentinel pipe (multiprocessing's, closed when `parent` dies) and ends the
    worker; the kernel's parent pid being the fork server's had made every worker exit at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import multiprocessing
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() == parent:
        return
    # else `parent` died before the request took effect (this worker was handed to another process),
    # unless a fork server forked this worker and `parent`, which started it, is still alive
    creator = multiprocessing.parent_process()  # the process that started this one, whatever the start method
    served = multiprocessing.get_start_method(allow_none=True) == "forkserver"
    if not (served and creator is not None and creator.pid == parent and creator.is_alive()):
        os._exit(1)
    import threading

    threading.Thread(target=_exit_when_closed, args=(creator.sentinel,), name="exit-with-parent", daemon=True).start()


def _exit_when_closed(sentinel: int) -> None:
    """End this process once `sentinel` (its creator's pipe, see `exit_with_parent`) reads as closed."""
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


def worker_options(workers: int) -> dict:
    """The DataLoader options every loader here passes with `workers` > 0: workers end with their parent, and
    know when this process read its sources (`augment.sources.check_unchanged_since_read`; fork copies it,
    spawn and forkserver start without it)."""
    import functools

    from augment.sources import sources_read_at

    return {"worker_init_fn": functools.partial(start_worker, os.getpid(), sources_read_at())} if workers > 0 else {}


def start_worker(parent: int, sources_read: dict[str, int], worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn` of `worker_options`."""
    from augment.sources import restore_sources_read_at

    restore_sources_read_at(sources_read)
    exit_with_parent(parent, worker_id)


class DataWorkerDied(MatPlusError):
    """A DataLoader worker process died (killed: the OOM killer, most often)."""


def worker_death(exc: BaseException, then: str = "re-run the same command", workers: int | None = None
                 ) -> DataWorkerDied | None:
    """The one-line error for torch's RuntimeError about a dead DataLoader worker ("DataLoader worker
    (pid N) is killed by signal: Killed.", "... exited unexpectedly"), or None for any other error;
    `then`: what to do after lowering --workers. torch raises it from its SIGCHLD handler, so it may
    surface anywhere in the main process (inside a generator's own code too), not only where the
    loader is read: callers convert it around their whole loop as well, and nothing may wrap it.
    `workers`: the --workers the run has, said in the message. The trainer's loader uses it too.
    After a Ctrl-C (`augment.cli_common.interrupt_arrived`) the workers died of it: KeyboardInterrupt."""
    if not (isinstance(exc, RuntimeError) and "DataLoader worker (pid" in str(exc)):
        return None
    from augment.cli_common import interrupt_arrived

    if interrupt_arrived():  # the workers stopped with the main process: the interrupted line, not "out of memory"
        raise KeyboardInterrupt from None
    now = '' if workers is None else f'{workers} now'
    # "exited unexpectedly": the OOM killer's SIGKILL seen from the loader's queue, or a failure of the
    # worker's own at start-up (every forkserver worker once): --workers 0 shows such an error in the process
    own = "" if "killed by signal" in str(exc) else "--workers 0 shows an error of the worker's own"
    aside = "; ".join(part for part in (now, own) if part)
    return DataWorkerDied(f"a data-loading worker process died ({first_line(exc).rstrip('.')}), likely out of "
                          f"memory: use fewer --workers{f' ({aside})' if aside else ''}, then {then}")


def raise_worker_death(exc: RuntimeError, then: str = "re-run the same command", workers: int | None = None) -> NoReturn:
    """Re-raise `exc`, as `worker_death`'s one line when it reports a dead DataLoader worker (every
    `except RuntimeError` around a loader, or around a loop torch's SIGCHLD handler may interrupt)."""
    died = worker_death(exc, then, workers)
    if died is None:
        raise exc
    raise died from None


def as_list(batch: list) -> list:
    """collate_fn that keeps a batch as the list of what __getitem__ returned."""
    return batch


class MappedSequence:
    """`function(items[i])` for each i: a map-style dataset (DataLoader needs only len and []).

    `catching`: an exception is returned as a `_Raised`, not raised (in DataLoader workers).
    Reading `items[i]` is inside the catch too: a source row decodes its image when read."""

    def __init__(self, items: Sequence, function: Callable[[Any], Any] | None = None, catching: bool = False):
        self.items = items
        self.function = function
        self.catching = catching

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            item = _row(self.items, index)
            return item if self.function is None else self.function(item)
        except Exception as exc:  # noqa: BLE001 - re-raised as it is in the main process
            if not self.catching:
                raise
            return _Raised(exc)


def _row(items: Sequence, index: int):
    """`items[index]`. A source row whose image fails to decode fails naming its record (image id
    and file, as `augment.sources.validate_images` does), not only the file its decoder was given."""
    try:
        return items[index]
    except SourceError:
        if "image_id" not in (getattr(items, "column_names", None) or ()):
            raise
        from augment.sources import validate_images

        validate_images(items.select([index]))  # the same decoding fails again, with the record's name
        raise


class _Raised:
    """An exception a worker caught, carried back whole: torch would re-raise it as a new
    exception whose first line names the worker, not the bad record."""

    def __init__(self, exception: Exception):
        self.exception = exception


class DecodingWorkers:
    """`workers` DataLoader processes kept for several passes over the same `items`, each pass
    with one of the named `functions`: `passes("name", batches)` yields
    `[functions["name"](items[i]) for i in batch]` for each index batch, in order, as
    `ordered_batches` does (inline with 0 workers; a dead worker is `DataWorkerDied`).

    An evaluation reads its gallery once per attack: a loader per pass started its workers again
    each time, which under spawn and forkserver (macOS's and Python 3.14's defaults) imports torch
    in every worker again, seconds per pass. Here the workers start on the first pass that has
    batches and end with `close()`; the functions and `items` travel to them once, at their start.
    `items` None: the batches hold the items themselves, not indices (each item then travels with its
    batch, to the one worker that decodes it: `augment score`'s chunks of images, new at each call)."""

    def __init__(self, items: Sequence | None, functions: dict[str, Callable[[Any], Any]], workers: int,
                 prefetch: int = PREFETCH_FACTOR, after_worker_death: str = "re-run the same command"):
        # no more workers than items, where they are known
        workers = workers if items is None else min(workers, max(len(items), 1))
        self.items, self.workers, self.prefetch = _Itself() if items is None else items, workers, prefetch
        self.functions = dict(functions)
        self.after_worker_death = after_worker_death
        self._sampler = _PassBatches()
        self._loader = None
        self._pass = 0  # the pass whose batches the loader serves now

    def passes(self, function: str, batches: Iterable[Sequence[int]]) -> Iterator[list]:
        """The batches of one pass, decoded by `functions[function]`; a pass started before another one
        has yielded all its batches leaves that one unusable (it raises if read on)."""
        batches = [list(batch) for batch in batches]
        if function not in self.functions:
            raise KeyError(f"no decoding function {function!r}; expected one of {', '.join(self.functions)}")
        self._pass += 1
        if not batches:
            return iter(())
        if self.workers <= 0:
            sequence = MappedSequence(self.items, self.functions[function])
            return ([sequence[i] for i in batch] for batch in batches)
        return self._served(function, batches, self._pass)

    def _served(self, function: str, batches: list[list[int]], number: int) -> Iterator[list]:
        if self._loader is None:
            from torch.utils.data import DataLoader

            dataset = _NamedFunctions({name: MappedSequence(self.items, f, catching=True)
                                       for name, f in self.functions.items()})
            self._loader = DataLoader(dataset, batch_sampler=self._sampler, collate_fn=as_list,
                                      num_workers=self.workers,
                                      prefetch_factor=self.prefetch, persistent_workers=True,
                                      **worker_options(self.workers))
        self._sampler.batches = [[(function, i) for i in batch] for batch in batches]
        read = iter(self._loader)  # persistent workers: the same processes, told to start a new pass
        for _ in batches:
            if self._pass != number:
                raise RuntimeError("a decoding pass was read after a later one started")
            try:
                batch = next(read)
            except RuntimeError as exc:  # not around the yield: the consumer's own errors pass untouched
                raise_worker_death(exc, self.after_worker_death)
            for value in batch:
                if isinstance(value, _Raised):
                    raise value.exception
            yield batch

    def close(self) -> None:
        """End the worker processes (idempotent); a later pass starts new ones."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)  # torch keeps a persistent loader's workers there
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def __enter__(self) -> "DecodingWorkers":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Itself:
    """The items of a `DecodingWorkers` whose batches hold them: item i is i."""

    def __getitem__(self, item):
        return item

    def __len__(self) -> int:
        return 0


class _PassBatches:
    """A `DecodingWorkers` loader's batch sampler: the current pass's batches, set before each pass
    (a persistent loader reads its sampler again at every `iter`)."""

    def __init__(self):
        self.batches: list[list] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _NamedFunctions:
    """Dataset of a `DecodingWorkers` loader: index (function name, i) -> that function's sequence's item i."""

    def __init__(self, sequences: dict[str, MappedSequence]):
        self.sequences = sequences

    def __len__(self) -> int:
        return len(next(iter(self.sequences.values()), ()))

    def __getitem__(self, index: tuple[str, int]):
        function, i = index
        return self.sequences[function][i]


def ordered_batches(items: Sequence, batches: Iterable[Sequence[int]], workers: int,
                    function: Callable[[Any], Any] | None = None, prefetch: int = PREFETCH_FACTOR,
                    after_worker_death: str = "re-run the same command") -> Iterator[list]:
    """Lists `[function(items[i]) for i in batch]` for each index batch, in order; computed
    by `workers` DataLoader processes ahead of the consumer (inline when workers is 0). A worker
    that dies is `DataWorkerDied` (one line ending in `after_worker_death`: what to do then).
    One pass: its workers end with it (`DecodingWorkers` serves several)."""
    batches = [list(batch) for batch in batches]
    with DecodingWorkers(items, {"": function}, min(workers, len(batches)), prefetch, after_worker_death) as decoding:
        yield from decoding.passes("", batches)
