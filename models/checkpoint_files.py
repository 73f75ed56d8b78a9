"""Checks of a checkpoint file a user names, shared by the families that read one (ALBEF/TCL `.pth`,
open_clip `--pretrained FILE`): what the file is, and one line when torch.load(weights_only=True)
refuses it. torch's own refusal is many lines and advises weights_only=False, which would run the
code a malicious file holds."""
from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from augment.errors import ModelLoadError, first_line

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format (and numpy's .npz)
_PICKLE_PROTO = 0x80  # first opcode of a pickle of protocol 2 or later: legacy torch.save, raw pickle


def looks_like_torch_checkpoint(path: str | Path) -> bool:
    """Whether the file starts as torch.load's input (a zip archive or a pickle) or a safetensors file:
    a text file, an empty or foreign file is named as such, not as a pickle torch.load cannot read."""
    with open(path, "rb") as stream:
        head = stream.read(9)
    safetensors_header = len(head) == 9 and head[8:9] == b"{"  # 8-byte header length, then its JSON
    return head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTO]) or safetensors_header


def check_checkpoint_file(path: str | Path, what: str) -> None:
    """Refuse in one line a file that is no torch checkpoint, or a zip-format one whose bytes are
    damaged: torch.load checks no checksum, so a file corrupted inside a tensor (a download cut and
    resumed, a bad copy) loads and runs with wrong weights. `testzip` reads the file once more
    (about a second per GB; torch.load then reads it from the page cache)."""
    import zipfile

    if not looks_like_torch_checkpoint(path):
        raise not_a_checkpoint_error(path, what)
    with open(path, "rb") as stream:
        if not stream.read(4).startswith(_ZIP_MAGIC):
            return  # legacy pickle format and safetensors carry no checksums
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {what} {path}: a damaged archive ({first_line(exc)}), truncated or "
                             "cut short; download or copy it again") from None
    if damaged is not None:
        raise ModelLoadError(f"cannot load {what} {path}: its entry {damaged} fails its checksum (the file is "
                             "damaged); download or copy it again")


def not_a_checkpoint_error(path: str | Path, what: str) -> ModelLoadError:
    # not the pickle refusal: its advice (re-save the state dict) cannot help a file that is no checkpoint
    return ModelLoadError(f"cannot load {what} {path}: not a PyTorch checkpoint (torch.load reads neither a zip "
                          "archive nor a pickle in it); download or copy it again")


@contextlib.contextmanager
def quiet_pickle_protocol_warning() -> Iterator[None]:
    """torch.load(weights_only=True) warns in two lines of a pickle protocol above 2 before it refuses
    the file; the refusal's one line says it all."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def pickle_refusal_error(path: str | Path, exc: pickle.UnpicklingError) -> ModelLoadError:
    """One line for a checkpoint `torch.load(weights_only=True)` refused (torch's advice never repeated);
    `path` is the file, or what names it (a model folder whose weights file transformers read)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    code = f"it holds {found.group(1)}" if found else "it holds objects other than tensors"
    if found and found.group(1) == "torch.storage._load_from_bytes":
        # tensors pickled by Python's pickle, not torch.save: torch's unpickler stops at the first tensor,
        # so what else the file holds is not known; naming torch's own loader read as the culprit
        code = "it was written by Python's pickle, not torch.save, so even its tensors need pickle"
    elif "Unsupported operand" in str(exc):
        # an opcode of pickle protocol 4+ (Python's pickle.dump default, or torch.save(pickle_protocol=4)):
        # torch's weights-only unpickler stops there, whatever the file holds
        code = ("it was pickled with protocol 4 or later, which torch's weights-only loader does not read; "
                "torch.save's default protocol does")
    return ModelLoadError(f"refusing to load {path}: it is not a weights-only checkpoint (it needs pickle to run "
                          f"code: {code}); if you trust the file, re-save only its state dict of tensors")
