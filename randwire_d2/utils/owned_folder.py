"""The folder a prediction writes into (tools/predict.py --output): new, empty, or holding an
earlier prediction, whose files its MANIFEST_FILE lists. A rerun replaces those files, and only
those; a folder holding files that predict did not write is refused, so that no file of the
user's is replaced or removed."""

import json
import logging
import os
from typing import List, Optional, Sequence

from ..trust import read_bounded

__all__ = ["MANIFEST_FILE", "check_output_folder", "prepare_output_folder"]

# The files a prediction wrote into --output: a rerun replaces them, and only them.
MANIFEST_FILE = "predict_manifest.json"
logger = logging.getLogger(__name__)


def check_output_folder(output: Optional[str], flag: str = "--output") -> List[str]:
    """`output` must not exist yet (it is created), be empty, or hold an earlier prediction
    (its MANIFEST_FILE): a folder holding files that predict did not write is refused, so that
    no file of the user's is replaced and no earlier picture is left among the new ones.
    Returns the files of the earlier prediction (that `prepare_output_folder` removes)."""
    if not output or not os.path.exists(output):
        return []
    if not os.path.isdir(output):
        raise ValueError(
            f"{flag} {output!r} is an existing file: expected a folder (created if missing) for "
            "the drawn images and their results"
        )
    entries = sorted(os.listdir(output))
    if MANIFEST_FILE in entries:
        return _read_manifest(os.path.join(output, MANIFEST_FILE))
    if entries:
        shown = ", ".join(entries[:3]) + (
            f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        )
        raise FileExistsError(
            f"{flag} {output!r} holds files that tools/predict.py did not write ({shown}): give "
            f"an empty or new folder (predict replaces only its own earlier outputs, which its "
            f"{MANIFEST_FILE} lists)"
        )
    return []


def _read_manifest(path: str) -> List[str]:
    """The file names an earlier prediction wrote, from its MANIFEST_FILE (a regular file, read
    with a bound): plain names in the folder; a path elsewhere, "..", a hidden name is an error
    naming the manifest, so that no list can make predict remove another file."""
    fix = "remove the folder's files, or give an empty or new --output folder"
    try:
        text = read_bounded(path, "--output's manifest", "results")
    except ValueError as e:
        raise ValueError(f"{e}: not predict's list of files; {fix}") from None
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not predict's list of files ({e!r}); {fix}") from None
    names = files if isinstance(files, list) else [files]
    bad = [n for n in names if not _plain_name(n)] or ([] if isinstance(files, list) else [files])
    if bad:
        raise ValueError(f"{path} lists {bad[0]!r}, not a file name predict writes; {fix}")
    return files


def _plain_name(name) -> bool:
    """A file name in the folder itself, not the manifest: no path, no "..", not hidden."""
    return (
        isinstance(name, str)
        and name == os.path.basename(name)
        and not name.startswith(".")
        and name not in ("", MANIFEST_FILE)
    )


def prepare_output_folder(output: str, names: Sequence[str]) -> List[str]:
    """Make `output` ready for a prediction that writes `names`: the files an earlier prediction
    wrote there are removed (other files stay; see `check_output_folder`), then MANIFEST_FILE
    lists `names`, before any of them is written. Returns the removed names."""
    earlier = check_output_folder(output)
    removed = [n for n in earlier if os.path.isfile(os.path.join(output, n))]
    for n in removed:
        os.remove(os.path.join(output, n))
    if removed:
        logger.info(f"removed the {len(removed)} files of the earlier prediction in {output}")
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, MANIFEST_FILE), "w") as f:
        json.dump({"written_by": "tools/predict.py", "files": list(names)}, f, indent=0)
    return removed
