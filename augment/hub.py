"""Publishing a pool: the Hub dataset repository, pushed to the Hub or written to a folder.

The repository holds::

    README.md                              data card (data_cards/), merged with push_to_hub's
    pool.json                              the pool's provenance, unchanged
    scores.json                            when the pool has one
    data/train-00000-of-0000N.parquet      the rows, images embedded as bytes

`write_repo_folder` writes exactly that to a local folder (no network, no token), so
`datasets.load_dataset(DIR)` and `augment.pool.load_pool(DIR)` both read it: into an empty
folder, over its own earlier export (finished, or killed: the same command finishes it), or with
`--force` over another pool's export; never among files an export does not write.

Name clashes on the Hub (`check_target`): a repository that already holds a *different* pool
(other method, parameters, seed or source: `same_pool`), a dataset that is not a mat-plus pool,
or a model repository of the same name are refused unless `--force`; pushing to a branch that
does not exist yet (`--revision`) never clashes. Re-pushing the same pool updates it in place.
With `--force` the target (repository or branch) then holds the pool alone: every file it held
but `.gitattributes` is deleted before the upload (`_remove_earlier_content`).

Failures (offline, no token, 401/403/404, no network) become one `HubError` line; the token is
never put into a message, a card or a file.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from augment.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    is_temporary,
    naming_write_errors,
    output_folder_problem,
    remove_stale_temporaries,
    sole_writer_of_processes,
    temporary_path,
)
from augment.errors import MatPlusError, PoolError, first_line
from augment.json_records import DamagedRecord, read_json_object
from augment.local_paths import shorten_local_paths
from augment.pool import DATA_DIR, IDENTITY_KEYS, KEYS_ADDED_SINCE, POOL_META, WRITER_LOCK, Pool, identity_value
from augment.scoring import store
from data_cards.render import SPLIT, CardOptions, merge_cards, render_card

CARD_FILE = "README.md"
SCORES_FILE = "scores.json"
# datasets' own default max_shard_size for push_to_hub ("500MB"); we pass the resulting shard
# count explicitly so that a pushed repo and a --to-dir folder have the same files
MAX_SHARD_BYTES = 500 * 10**6
# files a freshly created Hub repo may already hold: such a repo counts as empty
_EMPTY_REPO_FILES = {".gitattributes", CARD_FILE}
# what a --to-dir export writes (and a Hub repo's .gitattributes): all --force may replace
_EXPORT_FILES = {CARD_FILE, POOL_META, SCORES_FILE, ".gitattributes"}
_EXPORT_SHARD = re.compile(rf"{SPLIT}-\d{{5}}-of-\d{{5}}\.parquet")
# besides IDENTITY_KEYS: what tells derived pools (select, adversarial) apart
_EXTRA_IDENTITY_KEYS = ("modality",)
# huggingface_hub's HTTP client has no timeout: on a network that drops packets the first request
# would hang for minutes, so a TCP connection to the Hub is tried first, this long at most
REACH_TIMEOUT_S = 10.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
LOGIN_HINT = "run `hf auth login` (older: `huggingface-cli login`) or set HF_TOKEN"
OFFLINE_MESSAGE = (
    "the Hugging Face Hub is switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): "
    "unset it to push, or write the repository locally with --to-dir DIR"
)


class HubError(MatPlusError):
    """Publishing a pool failed: offline, no or bad token, Hub refusal, or a name clash."""


# ----------------------------------------------------------------------------- pool content


def read_scores(pool: Pool) -> Any | None:
    """The pool's scores.json (schema owned by `augment score`), or None when it has none."""
    path = pool.path / SCORES_FILE
    if not path.exists():
        return None
    try:  # a byte-order mark allowed, as every other reader of scores.json allows it (`augment.json_records`)
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise PoolError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PoolError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def published_scores(pool: Pool) -> tuple[Any | None, list[str]]:
    """scores.json as it is published, and the scorers left out of it: those computed before the
    pool's data files changed (`--overwrite`, a copy: `store.scored_as_it_is`, as select refuses
    them) describe rows it may no longer have; those whose intervals an earlier resampling scheme
    drew (`store.intervals_are_current`) would be published too narrow. Another kind of document goes as it is."""
    document = read_scores(pool)
    if not (isinstance(document, dict) and "scorers" in document):
        return document, []
    store.check_scores_document(document, pool.path / SCORES_FILE, pool.path)
    current = {slug: entry for slug, entry in document["scorers"].items()
               if store.scored_as_it_is(entry, pool) and store.intervals_are_current(entry)}
    left_out = [slug for slug in document["scorers"] if slug not in current]
    if not left_out:
        return document, []
    if not current:
        return None, left_out
    latest = document["latest"] if document["latest"] in current else _newest(current)
    return {**document, "scorers": current, "latest": latest}, left_out


def _newest(entries: dict[str, Any]) -> str:
    """The slug of the entry scored last (its "created" time), for a latest entry left out: scores.json
    is written with sorted keys, so the last one listed was only the alphabetically last scorer. An entry
    without a readable time counts as the oldest."""
    def created(slug: str) -> datetime:
        try:
            when = datetime.fromisoformat(str(entries[slug].get("created")))
        except ValueError:
            return datetime.min.replace(tzinfo=timezone.utc)
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)

    return max(entries, key=created)


def _superseded(document: Any, published: Any, left_out: list[str]) -> dict[str, tuple[str, str]]:
    """{left-out slug: (scorer name, published slug)} for the left-out entries whose scorer (by name) has a
    published entry under another id: an earlier mat-plus's id of the same model (the id's digest changed on
    2026-12-02), or a model folder retrained in place since. Scoring again writes the published id's entry, so
    the left-out one stays left out; said as such, not with the advice to run `augment score` again."""
    def scorer_of(entry: Any) -> tuple[str, Any] | None:
        scorer = entry.get("scorer") if isinstance(entry, dict) else None
        named = isinstance(scorer, dict) and isinstance(scorer.get("name"), str)
        return (scorer["name"], scorer.get("id")) if named else None

    if not (isinstance(document, dict) and isinstance(published, dict) and isinstance(published.get("scorers"), dict)):
        return {}
    ids = {scorer[0]: (scorer[1], slug) for slug, entry in published["scorers"].items() if (scorer := scorer_of(entry))}
    superseded = {}
    for slug in left_out:
        scorer = scorer_of(document["scorers"].get(slug))
        if scorer is not None and scorer[0] in ids and ids[scorer[0]][0] != scorer[1]:
            superseded[slug] = (scorer[0], ids[scorer[0]][1])
    return superseded


def publication(pool: Pool, options: CardOptions):
    """(data card, {file name: bytes} of pool.json and scores.json) as published; built before anything
    is written or uploaded, so a template error or a damaged scores.json changes nothing."""
    with store.reading_scores(pool.path):  # the card's summary and the scores.json published: one document
        scores, left_out = published_scores(pool)
        files = {POOL_META: published_json(pool.path / POOL_META)}
        if scores is not None:
            files[SCORES_FILE] = (published_json(pool.path / SCORES_FILE) if not left_out
                                  else (json.dumps(published_document(scores), indent=2) + "\n").encode())
        superseded = _superseded(read_scores(pool), scores, left_out)
    if superseded:  # `augment score` cannot make them current: it scores under the published id
        print(f"note: {pool.path / SCORES_FILE}: the scores of {', '.join(superseded)} are left out: "
              f"{'; '.join(f'{name} is published as {slug}' for name, slug in superseded.values())} (the same "
              "scorer under the id this version gives it, or its weights since)", file=sys.stderr)
    if left_out := [slug for slug in left_out if slug not in superseded]:
        print(f"note: {pool.path / SCORES_FILE}: the scores of {', '.join(left_out)} are left out: the pool's data "
              "files changed (rewritten, copied without their times, or exported by augment push) after they were "
              "computed, or an earlier mat-plus drew their confidence intervals (a resampling scheme since found "
              f"too narrow); run `augment score {pool.path}` to publish current ones", file=sys.stderr)
    source_split = pool.meta.get("split")
    if isinstance(source_split, str) and source_split not in ("train", "all") and not source_split.startswith("train+"):
        # the Hub names a repository's one split `train`: a pool of test images read as training data leaks them
        print(f"note: {pool.path} is made from the source's {source_split!r} split; the Hub lists its rows under the "
              "split `train` (a repository's only split): the card's Source section and every row's `split` "
              "column say which images they are", file=sys.stderr)
    # the card's scores table names each scorer as scores.json does: a local folder by its last part
    return render_card(pool.meta, published_document(scores) if scores is not None else None, options), files


def published_json(path: Path) -> bytes:
    """A JSON side file as it is published (`published_document`); a file that is not JSON goes as it is."""
    data = path.read_bytes()
    try:
        document = json.loads(data)
    except ValueError:
        return data
    published = published_document(document)
    return data if published == document else (json.dumps(published, indent=2) + "\n").encode()


def published_document(value: Any) -> Any:
    """`value` with every local absolute path in its strings replaced by its last part (as the card
    names a local source; `augment.local_paths`), all else unchanged: a public repo must not show
    the uploader's user name and folders."""
    if isinstance(value, dict):
        return {key: published_document(item) for key, item in value.items()}
    if isinstance(value, list):
        return [published_document(item) for item in value]
    if isinstance(value, str):
        return shorten_local_paths(value)
    return value


def shard_count(pool: Pool) -> int:
    return int(pool.dataset.data.nbytes / MAX_SHARD_BYTES) + 1


def shard_name(index: int, num_shards: int) -> str:
    """The name push_to_hub gives a shard."""
    return f"{DATA_DIR}/{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"


# ----------------------------------------------------------------------------- local folder


def write_repo_folder(pool: Pool, out_dir: str | Path, options: CardOptions, force: bool = False) -> Path:
    """Write the Hub repository of `pool` into `out_dir`; return the folder."""
    out = Path(out_dir)
    card, files = publication(pool, options)
    _check_folder_target(out, pool.path, files[POOL_META], force)  # before the lock makes the folder
    with sole_writer_of_processes(out, WRITER_LOCK, "another augment push, generate or select is writing this "
                                  "folder; wait for it to finish, or choose another --to-dir", True, 1, PoolError):
        # again, now alone: another export that had written its rows but not its pool.json passed for a
        # killed one of this pool, so each replaced the other's rows and its pool.json went with the other's rows
        _check_folder_target(out, pool.path, files[POOL_META], force)
        _remove_earlier_export(out)
        shards = _write_shards(pool, out)
        # pool.json right after the rows: a folder holding it is a finished export of that pool, or this
        # one killed before its last files (`_holds_this_export`)
        for name in (POOL_META, SCORES_FILE):
            if name in files:
                atomic_write_bytes(out / name, files[name])
        atomic_write_text(out / CARD_FILE, str(merge_cards(_local_hub_card(pool, shards), card)))
        # the export is the Hub repository's files alone: its lock file goes, unlinked while held (a run that
        # opened it meanwhile finds it gone and makes its own); a killed export's is kept, and accepted
        (out / WRITER_LOCK).unlink(missing_ok=True)
    return out


def _check_folder_target(out: Path, pool_path: Path, published_meta: bytes, force: bool) -> None:
    from augment.pool import folders_overlap

    if folders_overlap(out, pool_path):
        raise PoolError(f"{out}: overlaps the pool folder {pool_path}; choose another --to-dir")
    problem = output_folder_problem(out)
    if problem:
        raise PoolError(f"{out}: {problem}; choose another --to-dir")
    if not out.exists() or not any(out.iterdir()):
        return
    foreign = _not_exported(out)
    if foreign:  # --force replaces an earlier export's files, never writes them among someone's data
        raise PoolError(f"{out}: holds files that are not a pool export ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); choose another --to-dir")
    if not force and not _holds_this_export(out, published_meta):
        raise PoolError(f"{out}: exists and is not empty; choose another --to-dir, or --force to replace its pool files")


def _not_exported(out: Path) -> list[str]:
    """The files and folders in `out` (paths relative to it) that no export writes, temporaries of its
    writes aside."""
    data = out / DATA_DIR
    found = [entry.name for entry in sorted(out.iterdir()) if entry != data
             and not (entry.is_file() and (entry.name in _EXPORT_FILES or entry.name == WRITER_LOCK
                                           or is_temporary(entry)))]
    if data.is_dir() and not data.is_symlink():
        found += [f"{DATA_DIR}/{entry.name}" for entry in sorted(data.iterdir())
                  if not (entry.is_file() and (_EXPORT_SHARD.fullmatch(entry.name) or is_temporary(entry)))]
    elif data.exists() or data.is_symlink():
        found.append(DATA_DIR)
    return found


def _holds_this_export(out: Path, published_meta: bytes) -> bool:
    """Whether `out`, holding export files only, is this export: finished, or killed part-way (by then
    pool.json is ours, or absent with nothing but shards and temporaries; those a killed export of
    another pool left are only as good as lost, and are replaced)."""
    meta = out / POOL_META
    if meta.is_file():
        return meta.read_bytes() == published_meta
    return all(entry.name in (DATA_DIR, WRITER_LOCK) or is_temporary(entry) for entry in out.iterdir())


def _remove_earlier_export(out: Path) -> None:
    """Delete what an earlier export wrote (`_check_folder_target` allowed it), pool.json first: until
    this export writes it again, the folder is an unfinished export. Dead runs' temporaries too."""
    for name in (POOL_META, SCORES_FILE, CARD_FILE):
        (out / name).unlink(missing_ok=True)
    for shard in (out / DATA_DIR).glob(f"{SPLIT}-*.parquet"):
        shard.unlink()
    remove_stale_temporaries(out)


def _write_shards(pool: Pool, out: Path) -> list[Path]:
    num_shards = shard_count(pool)
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_shards):
        shard = pool.dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        path = out / shard_name(index, num_shards)
        tmp = temporary_path(path)
        try:
            with naming_write_errors(path, tmp):
                _embedded(shard).to_parquet(str(tmp), batch_size=_writer_batch_size(shard))
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def _embedded(dataset):
    """Images stored as file paths become bytes, as push_to_hub does (a repo has no local files).
    A shard whose images are all bytes already is returned as it is: datasets' embedding changes none
    of its values, and it copied the whole shard into memory (up to `MAX_SHARD_BYTES` of images, built
    by doubling) for nothing: `push --to-dir` of 800 img-aug rows of 640x480 (497 MB) peaked at 2.6 GB."""
    from datasets.table import embed_table_storage

    if not _any_image_path(dataset):
        return dataset
    return dataset.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)


def _any_image_path(dataset) -> bool:
    """Whether an image of `dataset` has a path (which embedding reads, or shortens to its file name)
    or is an image of neither bytes nor path (which it makes a missing image): read from the column's
    path and validity buffers, the bytes left where they are (memory-mapped)."""
    if "image" not in dataset.column_names:
        return False
    for chunk in dataset.data.table.column("image").chunks:
        data, path = chunk.flatten()  # the fields as the struct's own nulls leave them
        if path.null_count < len(path) or data.null_count != chunk.null_count:
            return True
    return False


def _writer_batch_size(dataset) -> int | None:
    # image columns get small row groups on the Hub (its viewer reads by row group); same here.
    # datasets' own function for it, under its name of each release: 4.1+, 3.1-4.0, 3.0 (pyproject's oldest)
    try:
        from datasets.arrow_writer import get_writer_batch_size_from_features as writer_batch_size
    except ImportError:
        try:
            from datasets.arrow_writer import get_writer_batch_size as writer_batch_size
        except ImportError:
            from datasets.io.parquet import get_writer_batch_size as writer_batch_size

    return writer_batch_size(dataset.features)


def _local_hub_card(pool: Pool, shards: list[Path]):
    """The card push_to_hub would have written for these shards: `dataset_info` and `configs`."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    dataset = pool.dataset
    info = DatasetInfo(config_name="default", features=dataset.features, splits=SplitDict())
    info.splits.add(SplitInfo(name=SPLIT, num_bytes=dataset.data.nbytes, num_examples=len(dataset)))
    info.download_size = sum(path.stat().st_size for path in shards)
    info.dataset_size = dataset.data.nbytes
    info.size_in_bytes = info.download_size + info.dataset_size
    card_data = DatasetCardData()
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    configs = {"default": {"data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}}
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n")


# ----------------------------------------------------------------------------- Hub access


def require_online() -> None:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise HubError(OFFLINE_MESSAGE)


def require_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError(f"no Hugging Face token found: {LOGIN_HINT}")
    return token


def require_reachable(timeout: float = REACH_TIMEOUT_S) -> None:
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return  # only the proxy knows whether the Hub can be reached
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise HubError(
            f"cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__}: {first_line(exc)}); "
            "check the network or HF_ENDPOINT"
        ) from None


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _http_message(status: int | None, what: str, repo_id: str | None) -> str:
    from huggingface_hub import constants

    if status == 401:
        return f"the Hub refused the token (401 Unauthorized) while {what}: it may be expired or revoked; {LOGIN_HINT}"
    if status == 403:
        return f"the token may not write to {repo_id or constants.ENDPOINT} (403 Forbidden) while {what}: use a token with write access to that user or organisation"
    if status == 404 and repo_id is None:
        return f"{constants.ENDPOINT} answered 404 Not Found while {what}: is HF_ENDPOINT a Hugging Face Hub?"
    if status == 404:
        return f"{repo_id}: not found on the Hub (404) while {what}: check the user or organisation name and --revision"
    if status == 409:
        return f"{repo_id or constants.ENDPOINT}: conflict on the Hub (409) while {what}: the name may be taken by a repository you cannot see; choose another --repo-id"
    if status == 429:
        return f"the Hub is rate-limiting requests (429) while {what}: wait a few minutes and push again"
    if status is not None and status >= 500:
        return f"the Hub failed (HTTP {status}) while {what}: try again later"
    return f"the Hub refused the request (HTTP {status}) while {what}"


def _scrubbed(text: str, token: str | None) -> str:
    from augment.cli_common import scrub_secrets

    return scrub_secrets(text.replace(token, "<token>") if token else text)


@contextlib.contextmanager
def hub_errors(what: str, repo_id: str | None, token: str | None) -> Iterator[None]:
    """Turn whatever the Hub client raises into one HubError line that never holds the token.

    `repo_id` names the repository in messages; None for calls about the account (whoami).
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(OFFLINE_MESSAGE) from None
    except LocalTokenNotFoundError:
        raise HubError(f"no Hugging Face token found: {LOGIN_HINT}") from None
    except HfHubHTTPError as exc:
        raise HubError(_scrubbed(_http_message(_status_code(exc), what, repo_id), token)) from None
    except (ConnectionError, TimeoutError, _transport_error()) as exc:
        reason = _scrubbed(f"{type(exc).__name__}: {first_line(exc)}", token)
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} while {what} ({reason}); check the network or HF_ENDPOINT") from None
    except OSError as exc:  # local files (temporary shards, the card) rather than the network
        raise HubError(_scrubbed(f"failed while {what}: {type(exc).__name__}: {first_line(exc)}", token)) from None
    except MatPlusError:
        raise
    except Exception as exc:  # anything else the client raises: still one line, still no token
        raise HubError(_scrubbed(f"the Hub client failed while {what}: {type(exc).__name__}: {first_line(exc)}", token)) from None


def _transport_error() -> type[BaseException]:
    """The HTTP client's base error (connection refused, DNS, timeouts); it is not an OSError."""
    for name in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        with contextlib.suppress(ImportError):
            return importlib.import_module(name).HTTPError
    return ConnectionError


def _hub_api(token: str):
    from huggingface_hub import HfApi

    return HfApi(token=token, library_name="mat-plus")


# ----------------------------------------------------------------------------- name clashes


@dataclass
class Target:
    """What `--repo-id` (at `--revision`) holds before the push."""

    exists: bool
    private: bool | None = None
    # it holds something other than this pool (another pool, a dataset, a new branch's copy of main):
    # what --force deletes before the upload; this pool is updated in place, never emptied first
    other_content: bool = False


def same_pool(ours: dict, theirs: dict) -> bool:
    # a copy pushed before the recipe (or a key of `KEYS_ADDED_SINCE`: the source's image fingerprint, the
    # device a model sampled on) was recorded is this pool updated, as `resumed_meta` resumes such a pool
    unrecorded = {key for key in ("recipe", *KEYS_ADDED_SINCE) if key not in ours or key not in theirs}
    return (all(identity_value(ours, k) == identity_value(theirs, k) for k in IDENTITY_KEYS if k not in unrecorded)
            and all(_normalised(ours.get(k)) == _normalised(theirs.get(k)) for k in _EXTRA_IDENTITY_KEYS))


def _normalised(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _where(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def check_target(api, repo_id: str, revision: str | None, meta: dict, force: bool) -> Target:
    """Refuse to push over something that is not this pool (see the module docstring)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = api.repo_info(repo_id, repo_type="dataset", revision=revision)
    except RevisionNotFoundError:
        return Target(exists=True, other_content=force)  # a new branch: push_to_hub creates it from main
    except RepositoryNotFoundError:
        if not force and api.repo_exists(repo_id, repo_type="model"):
            raise HubError(
                f"{repo_id} is a model repository on the Hub; choose another --repo-id for the "
                "pool, or --force to create a dataset repository of the same name beside it"
            ) from None
        return Target(exists=False)
    files = {sibling.rfilename for sibling in (info.siblings or [])}
    other_content = False
    if files - _EMPTY_REPO_FILES:
        if not force:
            _check_holds_same_pool(api, repo_id, revision, meta, files)
        else:
            other_content = not _holds_same_pool(api, repo_id, revision, meta, files)
    return Target(exists=True, private=getattr(info, "private", None), other_content=other_content)


def _holds_same_pool(api, repo_id: str, revision: str | None, meta: dict, files: set[str]) -> bool:
    try:
        _check_holds_same_pool(api, repo_id, revision, meta, files)
    except (HubError, ValueError):  # another pool, no pool, or an unreadable pool.json: replaced
        return False
    return True


def _check_holds_same_pool(api, repo_id: str, revision: str | None, meta: dict, files: set[str]) -> None:
    where = _where(repo_id, revision)
    if POOL_META not in files:
        raise HubError(
            f"{where}: holds a dataset that is not a mat-plus pool (no {POOL_META}); "
            "choose another --repo-id, or --force to replace its data"
        )
    path = api.hf_hub_download(repo_id, POOL_META, repo_type="dataset", revision=revision)
    try:
        theirs = read_json_object(path)
    except DamagedRecord as problem:  # "the Hub client failed: JSONDecodeError" before
        raise HubError(
            f"{where}: its {POOL_META} is damaged ({problem}), so whether it holds this pool cannot be told; "
            "push to a branch with --revision NAME, choose another --repo-id, or replace it with --force"
        ) from None
    if not same_pool(published_document(meta), theirs):  # theirs was published so
        raise HubError(
            f"{where}: holds a different pool (method {theirs.get('method')!r}, "
            f"{theirs.get('num_rows')} rows, created {theirs.get('created')}); push to a branch "
            "with --revision NAME, choose another --repo-id, or replace it with --force"
        )


# ----------------------------------------------------------------------------- push


def push_pool(
    pool: Pool,
    repo_id: str,
    options: CardOptions,
    private: bool = False,
    revision: str | None = None,
    force: bool = False,
) -> Target:
    """Upload the pool's data, then its card, pool.json and scores.json; return the target's state."""
    require_online()
    token = require_token()
    card, files = publication(pool, options)
    require_reachable()
    api = _hub_api(token)
    with hub_errors("checking the token", None, token):
        api.whoami()
    with hub_errors("checking the repository", repo_id, token):
        target = check_target(api, repo_id, revision, pool.meta, force)
    if force and target.other_content:
        with hub_errors("removing what the repository held", repo_id, token):
            _remove_earlier_content(api, repo_id, revision)
    with hub_errors("uploading the data", repo_id, token):
        _push_data(pool, repo_id, token, private, revision)
    with hub_errors("uploading the data card", repo_id, token):
        _push_card_and_files(api, repo_id, revision, card, files)
    return target


def _remove_earlier_content(api, repo_id: str, revision: str | None) -> None:
    """--force: one commit deleting every file of the target but .gitattributes, before the upload.
    push_to_hub replaces only its own split's shards: it keeps other splits, configs, data files and
    loading scripts, and the card's entries for them (refusing the upload when their features differ),
    so the repository became the pool mixed with what it replaced, under a card of the pool alone.
    Deleted first, card included, push_to_hub writes the card of this pool only. A push stopped
    after this commit is finished by the same command again. Never done where the target already
    holds this pool (`Target.other_content`): a re-push updates it in place, with no empty window."""
    from huggingface_hub import CommitOperationDelete

    if revision:  # a new branch starts as a copy of main (as push_to_hub would make it): its files go too
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    earlier = [name for name in api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
               if name != ".gitattributes"]
    if earlier:
        api.create_commit(
            repo_id,
            operations=[CommitOperationDelete(path_in_repo=name) for name in earlier],
            commit_message="mat-plus: remove what the repository held before this pool (--force)",
            repo_type="dataset",
            revision=revision,
        )


def _push_data(pool: Pool, repo_id: str, token: str, private: bool, revision: str | None) -> None:
    pool.dataset.push_to_hub(
        repo_id,
        config_name="default",
        split=SPLIT,
        private=private or None,  # None: the Hub's default for new repos (and no change to old ones)
        token=token,
        revision=revision,
        num_shards=shard_count(pool),
        commit_message=f"mat-plus: pool data ({pool.method}, {len(pool)} rows)",
    )


def _push_card_and_files(api, repo_id: str, revision: str | None, ours, files: dict[str, bytes]) -> None:
    """One commit after the data: the merged card, pool.json, scores.json (or its removal)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    card = merge_cards(_hub_card(api, repo_id, revision), ours)
    operations = [CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card).encode("utf-8"))]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
    stale_scores = SCORES_FILE not in files and SCORES_FILE in api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    if stale_scores:  # scores of a pool this push replaced, or of this pool before it was rewritten
        operations.append(CommitOperationDelete(path_in_repo=SCORES_FILE))
    api.create_commit(
        repo_id,
        operations=operations,
        commit_message="mat-plus: data card and pool provenance",
        repo_type="dataset",
        revision=revision,
    )


def _hub_card(api, repo_id: str, revision: str | None):
    """The card push_to_hub just wrote (None if the repo has none)."""
    from huggingface_hub import DatasetCard
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = api.hf_hub_download(repo_id, CARD_FILE, repo_type="dataset", revision=revision)
    except EntryNotFoundError:
        return None
    return DatasetCard.load(Path(path))


def repo_url(repo_id: str, revision: str | None = None) -> str:
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT}/datasets/{repo_id}"
    return f"{url}/tree/{revision}" if revision else url

