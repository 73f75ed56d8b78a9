"""Publishing a pool: the Hub dataset repository, pushed to the Hub or written to a folder.

The repository holds::

    README.md                              data card (data_cards/), merged with push_to_hub's
    pool.json                              the pool's provenance, unchanged
    scores.json                            when the pool has one
    data/train-00000-of-0000N.parquet      the rows, images embedded as bytes

`write_repo_folder` writes exactly that to a local folder (no network, no token), so
`datasets.load_dataset(DIR)` and `augment.pool.load_pool(DIR)` both read it.

Name clashes on the Hub (`check_target`): a repository that already holds a *different* pool
(other method, parameters, seed or source: `same_pool`), a dataset that is not a mat-plus pool,
or a model repository of the same name are refused unless `--force`; pushing to a branch that
does not exist yet (`--revision`) never clashes. Re-pushing the same pool updates it in place.

Failures (offline, no token, 401/403/404, no network) become one `HubError` line; the token is
never put into a message, a card or a file.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from augment.atomic import atomic_write_bytes, atomic_write_text, temporary_path
from augment.errors import MatPlusError, PoolError, first_line
from augment.local_paths import shorten_local_paths
from augment.pool import DATA_DIR, IDENTITY_KEYS, POOL_META, Pool
from data_cards.render import SPLIT, CardOptions, merge_cards, render_card

CARD_FILE = "README.md"
SCORES_FILE = "scores.json"
# datasets' own default max_shard_size for push_to_hub ("500MB"); we pass the resulting shard
# count explicitly so that a pushed repo and a --to-dir folder have the same files
MAX_SHARD_BYTES = 500 * 10**6
# files a freshly created Hub repo may already hold: such a repo counts as empty
_EMPTY_REPO_FILES = {".gitattributes", CARD_FILE}
# besides IDENTITY_KEYS: what tells derived pools (select, adversarial) apart
_EXTRA_IDENTITY_KEYS = ("modality", "parent")
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
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PoolError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def side_files(pool: Pool) -> dict[str, bytes]:
    """pool.json (the provenance) and scores.json when present, as published (`published_json`)."""
    files = {POOL_META: published_json(pool.path / POOL_META)}
    scores = pool.path / SCORES_FILE
    if scores.exists():
        files[SCORES_FILE] = published_json(scores)
    return files


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


def pool_card(pool: Pool, options: CardOptions):
    return render_card(pool.meta, read_scores(pool), options)


def shard_count(pool: Pool) -> int:
    return int(pool.dataset.data.nbytes / MAX_SHARD_BYTES) + 1


def shard_name(index: int, num_shards: int) -> str:
    """The name push_to_hub gives a shard."""
    return f"{DATA_DIR}/{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"


# ----------------------------------------------------------------------------- local folder


def write_repo_folder(pool: Pool, out_dir: str | Path, options: CardOptions, force: bool = False) -> Path:
    """Write the Hub repository of `pool` into `out_dir`; return the folder."""
    out = Path(out_dir)
    _check_folder_target(out, pool.path, force)
    _remove_stale_files(out)
    shards = _write_shards(pool, out)
    hub_card = _local_hub_card(pool, shards)
    card = merge_cards(hub_card, pool_card(pool, options))
    atomic_write_text(out / CARD_FILE, str(card))
    for name, payload in side_files(pool).items():
        atomic_write_bytes(out / name, payload)
    return out


def _check_folder_target(out: Path, pool_path: Path, force: bool) -> None:
    from augment.pool import folders_overlap

    if folders_overlap(out, pool_path):
        raise PoolError(f"{out}: overlaps the pool folder {pool_path}; choose another --to-dir")
    if out.exists() and not out.is_dir():
        raise PoolError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise PoolError(f"{out}: exists and is not empty; choose another --to-dir, or --force to replace its pool files")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (CARD_FILE, POOL_META, SCORES_FILE, DATA_DIR,
                                                                      ".gitattributes")) if out.is_dir() else []
    if foreign:  # --force replaces an earlier export's files, never writes them among someone's data
        raise PoolError(f"{out}: holds files that are not a pool export ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); choose another --to-dir")


def _remove_stale_files(out: Path) -> None:
    """Drop what an earlier export left that this one may not overwrite (other shard counts)."""
    for shard in (out / DATA_DIR).glob(f"{SPLIT}-*.parquet"):
        shard.unlink()
    (out / SCORES_FILE).unlink(missing_ok=True)


def _write_shards(pool: Pool, out: Path) -> list[Path]:
    num_shards = shard_count(pool)
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_shards):
        shard = pool.dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        path = out / shard_name(index, num_shards)
        tmp = temporary_path(path)
        try:
            _embedded(shard).to_parquet(str(tmp), batch_size=_writer_batch_size(shard))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def _embedded(dataset):
    """Images stored as file paths become bytes, as push_to_hub does (a repo has no local files)."""
    from datasets.table import embed_table_storage

    return dataset.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)


def _writer_batch_size(dataset) -> int | None:
    # image columns get small row groups on the Hub (its viewer reads by row group); same here
    from datasets.arrow_writer import get_writer_batch_size_from_features

    return get_writer_batch_size_from_features(dataset.features)


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


def same_pool(ours: dict, theirs: dict) -> bool:
    keys = (*IDENTITY_KEYS, *_EXTRA_IDENTITY_KEYS)
    return all(_normalised(ours.get(k)) == _normalised(theirs.get(k)) for k in keys)


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
        return Target(exists=True)  # a new branch: push_to_hub creates it
    except RepositoryNotFoundError:
        if not force and api.repo_exists(repo_id, repo_type="model"):
            raise HubError(
                f"{repo_id} is a model repository on the Hub; choose another --repo-id for the "
                "pool, or --force to create a dataset repository of the same name beside it"
            ) from None
        return Target(exists=False)
    files = {sibling.rfilename for sibling in (info.siblings or [])}
    if not force and files - _EMPTY_REPO_FILES:
        _check_holds_same_pool(api, repo_id, revision, meta, files)
    return Target(exists=True, private=getattr(info, "private", None))


def _check_holds_same_pool(api, repo_id: str, revision: str | None, meta: dict, files: set[str]) -> None:
    where = _where(repo_id, revision)
    if POOL_META not in files:
        raise HubError(
            f"{where}: holds a dataset that is not a mat-plus pool (no {POOL_META}); "
            "choose another --repo-id, or --force to replace its data"
        )
    path = api.hf_hub_download(repo_id, POOL_META, repo_type="dataset", revision=revision)
    theirs = json.loads(Path(path).read_text())
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
    card = pool_card(pool, options)  # a template error fails here, before anything is uploaded
    require_reachable()
    api = _hub_api(token)
    with hub_errors("checking the token", None, token):
        api.whoami()
    with hub_errors("checking the repository", repo_id, token):
        target = check_target(api, repo_id, revision, pool.meta, force)
    with hub_errors("uploading the data", repo_id, token):
        _push_data(pool, repo_id, token, private, revision)
    with hub_errors("uploading the data card", repo_id, token):
        _push_card_and_files(api, pool, repo_id, revision, card)
    return target


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


def _push_card_and_files(api, pool: Pool, repo_id: str, revision: str | None, ours) -> None:
    """One commit after the data: the merged card, pool.json, scores.json (or its removal)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    card = merge_cards(_hub_card(api, repo_id, revision), ours)
    files = side_files(pool)
    operations = [CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card).encode("utf-8"))]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
    stale_scores = SCORES_FILE not in files and SCORES_FILE in api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    if stale_scores:  # scores of a pool this push replaced
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

