"""DataLoader workers under the `spawn` and `forkserver` start methods (macOS's default is spawn,
Python 3.14's default on Linux is forkserver, and CUDA in workers needs one of them). There what a
worker runs is pickled: a local function cannot be, and a scorer's model should not be; under
forkserver a worker's kernel parent is the fork server, which made `exit_with_parent` end every
worker at once."""
from __future__ import annotations

import functools
import pickle
import sys

import pytest
import torch

from tests.conftest import loader_worker_outlives_killed_parent


def _forced(method: str):
    """torch's DataLoader with `multiprocessing_context=method` (the loaders here take the default one)."""
    return functools.partial(torch.utils.data.DataLoader, multiprocessing_context=method)


class _Gallery:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)


def _worker_pid(image) -> torch.Tensor:
    """A gallery view that says which process decoded the row."""
    import os

    return torch.tensor([os.getpid()])


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_evaluation_loader_runs_two_workers_under_spawn_and_forkserver(method, monkeypatch):
    """`train eval`'s gallery decoding (`gallery_decoding`, `gallery_pixels`) in 2 workers: the same
    batches as inline, and the same 2 processes for every pass (a pass per attack started its own
    loader, which under spawn imports torch in each worker again: 147 s against fork's 80 s for five
    attacks on the sample world). Before: spawn failed to pickle a local function; forkserver's workers
    exited at start-up ("DataLoader worker ... exited unexpectedly", reported as out of memory)."""
    import os

    from PIL import Image
    from torchvision import transforms as T

    from train.eval_common import gallery_decoding, gallery_pixels

    gallery = _Gallery([{"image": Image.new("RGB", (8, 8), (40 * k, 10, 200)), "image_id": k} for k in range(6)])
    views = {"victim": T.ToTensor(), "pid": _worker_pid}
    with gallery_decoding(gallery, views, 0) as decoding:
        inline = list(gallery_pixels(gallery, 2, decoding, "victim", [0, 1, 2]))
    monkeypatch.setattr(torch.utils.data, "DataLoader", _forced(method))
    with gallery_decoding(gallery, views, 2) as decoding:
        pids = [pixels for pixels, _ in gallery_pixels(gallery, 2, decoding, "pid", [0, 1, 2])]
        workers = list(gallery_pixels(gallery, 2, decoding, "victim", [0, 1, 2]))
        pids += [pixels for pixels, _ in gallery_pixels(gallery, 2, decoding, "pid", [2, 0])]
    assert len(workers) == len(inline) == 3
    for (pixels, rows), (expected_pixels, expected_rows) in zip(workers, inline):
        assert torch.equal(pixels, expected_pixels) and rows == expected_rows
    started = set(torch.cat(pids).flatten().tolist())
    assert len(started) == 2 and os.getpid() not in started


def test_grounding_decoding_pickles():
    """`train eval --task grounding`'s worker function (a local function before)."""
    from torchvision import transforms as T

    from train.evaluate_grounding import _decoded_views

    pickle.dumps(functools.partial(_decoded_views, [T.ToTensor(), T.ToTensor()]))


def test_a_scorers_workers_get_its_preprocessing_not_its_model():
    """`augment score --workers N` under spawn: the worker payload was the scorer with its model
    (tiny-clip's could not be pickled: "Can't pickle local object ... ClassTokenTransformer")."""
    from PIL import Image

    from augment.scoring.scorers import load_scorer

    scorer = load_scorer("tiny-clip")
    preparer = scorer.image_preparer()
    payload = pickle.dumps(preparer)
    assert len(payload) < 20_000  # the transform, not the weights
    images = [Image.new("RGB", (40, 30), (k, 2 * k, 3 * k)) for k in (10, 60)]
    assert torch.equal(pickle.loads(payload)(images), scorer.prepare_images(images))


def test_exit_with_parent_keeps_a_fork_server_worker_whose_creator_lives():
    """A worker forked by the fork server: its kernel parent is the server, its creator (this process)
    alive: it keeps running (it ran `os._exit(1)`)."""
    import multiprocessing
    import os

    from augment.loading import exit_with_parent

    worker = multiprocessing.get_context("forkserver").Process(target=exit_with_parent, args=(os.getpid(),))
    worker.start()
    worker.join(timeout=60)
    assert worker.exitcode == 0  # was 1: os._exit(1), the kernel parent being the fork server


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_worker_ends_when_its_parent_is_killed_under_spawn_and_forkserver(method, tmp_path):
    """kill -9 of the main process: its busy worker ends too. Under forkserver it lived on (with the
    fork server): the kernel's parent-death signal waits for the server, which waits for its
    keep-alive pipe, whose write end every worker holds (`tests/test_pool.py` checks fork)."""
    assert not loader_worker_outlives_killed_parent(tmp_path, method, wait_s=20)


def test_default_workers_leave_one_cpu_to_the_main_process(monkeypatch):
    import augment.loading as loading

    for cpus, workers in ((1, 0), (2, 1), (4, 3), (16, loading.MAX_DEFAULT_WORKERS)):
        monkeypatch.setattr(loading, "available_cpus", lambda: cpus)
        assert loading.default_workers() == workers, cpus
