"""The one writer of bids_rim's BIDS derivatives: names, dataset files and atomic writes.

Every output file goes through :func:`atomic_copy` or :func:`atomic_write_text`: it is
written under a temporary name in its final folder and moved into place with ``os.replace``,
so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from bids_rim import __version__

#: Entity order in file names (BIDS order; from/to/mode as fMRIPrep writes transforms).
ENTITY_ORDER = (
    ("subject", "sub"),
    ("session", "ses"),
    ("run", "run"),
    ("from", "from"),
    ("to", "to"),
    ("mode", "mode"),
    ("space", "space"),
    ("res", "res"),
    ("label", "label"),
    ("desc", "desc"),
)

#: Files of ours that the BIDS specification has no suffix for.
BIDSIGNORE = """\
# bids_rim outputs that BIDS has no suffix for (documented in the README)
*_table.tsv
*_table.json
*_patches.npz
*_patches.json
*_xfm.txt
*.html
sub-*/figures
sub-*/log
logs
group
models
"""

CODE_URL = "https://github.com/bids-rim/bids_rim"


def bids_name(entities: dict[str, Any], suffix: str, extension: str) -> str:
    """``sub-01_ses-1_space-QSM_desc-lesions_dseg.nii.gz`` from entities, suffix, extension."""
    known = {key for key, _ in ENTITY_ORDER}
    unknown = set(entities) - known
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{short}-{entities[key]}" for key, short in ENTITY_ORDER if entities.get(key) is not None]
    return "_".join([*parts, suffix]) + extension


def derivative_path(output_dir: Path, entities: dict[str, Any], suffix: str, extension: str,
                    datatype: str = "anat") -> Path:
    """Where a derivative file lives: ``OUT/sub-X/[ses-Y/]datatype/<bids_name>``."""
    folder = output_dir / f"sub-{entities['subject']}"
    if entities.get("session") is not None:
        folder = folder / f"ses-{entities['session']}"
    return folder / datatype / bids_name(entities, suffix, extension)


def _temporary_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary sibling of ``path``, then move it into place (``os.replace``).

    Readers never see a half-written file, and one that has the old file open or memory-mapped
    keeps reading the old content until it reopens.
    """
    path = Path(path)
    temporary = _temporary_sibling(path)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path, content: bytes) -> Path:
    """Write bytes to ``path`` atomically (a temporary sibling, then ``os.replace``)."""
    return atomic_write_with(path, lambda temporary: temporary.write_bytes(content))


def atomic_write_text(path: Path, text: str) -> Path:
    """Write text (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(source: Path, path: Path) -> Path:
    """Copy ``source`` to ``path`` atomically (content only: reruns give identical files)."""
    return atomic_write_with(path, lambda temporary: shutil.copyfile(source, temporary))


def atomic_write_json(path: Path, content: dict[str, Any]) -> Path:
    """Write a JSON file atomically, sorted and indented so that reruns are identical."""
    return atomic_write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def atomic_write_tsv(path: Path, table: pd.DataFrame, sidecar: dict[str, Any] | None = None) -> Path:
    """Write a TSV (``n/a`` for missing values, as BIDS asks) and its JSON sidecar atomically."""
    atomic_write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))
    if sidecar is not None:
        atomic_write_json(path.with_suffix(".json"), sidecar)
    return path


def container_entry() -> dict[str, str] | None:
    """GeneratedBy's Container entry when running in the bids_rim image, under Docker or
    Apptainer/Singularity (which sets ``APPTAINER_CONTAINER``/``SINGULARITY_CONTAINER``).

    The image sets ``BIDS_RIM_DOCKER``; ``/.dockerenv`` is not enough, since it marks any Docker
    container, including one where bids_rim was installed with pip and no image of ours exists.
    """
    if not os.environ.get("BIDS_RIM_DOCKER"):
        return None
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return {"Type": "singularity", "Tag": f"bids_rim:{__version__}"}
    return {"Type": "docker", "Tag": f"bids_rim:{__version__}"}


def dataset_roots(bids_dir: Path, derivatives: Sequence[Path] = (), output_dir: Path | None = None) -> dict[str, str]:
    """The datasets the outputs come from, by the name ``DatasetLinks`` gives them: ``raw`` for the input
    dataset, and each ``--derivatives`` dataset under its folder name (made unique); absolute paths.

    With ``output_dir``, the links an earlier run wrote there are kept under their names, so that
    the sidecars of that run still resolve when this run is given other ``-d`` datasets.
    """
    earlier = {name: path for name, path in linked_roots(output_dir).items() if name != "raw"} if output_dir else {}
    roots = {"raw": str(bids_dir.resolve()), **earlier}
    for derivative in derivatives:
        path = str(derivative.resolve())
        if path in roots.values():
            continue
        name, number = derivative.resolve().name, 2
        while name in roots:
            name, number = f"{derivative.resolve().name}{number}", number + 1
        roots[name] = path
    return roots


def linked_roots(output_dir: Path) -> dict[str, str]:
    """The local datasets (``file://``) that ``output_dir``'s ``dataset_description.json`` links, by name."""
    try:
        links = json.loads((output_dir / "dataset_description.json").read_text()).get("DatasetLinks") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: unquote(urlparse(uri).path) for name, uri in links.items()
            if isinstance(uri, str) and uri.startswith("file://")}


def bids_uri(path: str | Path, roots: dict[str, str]) -> str:
    """``bids:<name>:<relative path>`` for ``path`` in the most specific dataset of ``roots`` that holds it
    (a lesion mask under ``raw/derivatives/lesion_masks`` names that derivative dataset, not raw);
    a ``file://`` URI where none holds it."""
    absolute = Path(os.path.abspath(path))
    resolved = absolute.parent.resolve() / absolute.name  # not the file's own link: DataLad's point into .git
    holders = [(name, Path(root)) for name, root in roots.items() if resolved.is_relative_to(root)]
    if not holders:
        return resolved.as_uri()
    name, root = max(holders, key=lambda holder: len(holder[1].parts))
    return f"bids:{name}:{resolved.relative_to(root).as_posix()}"


def write_dataset_description(output_dir: Path, roots: dict[str, str]) -> Path:
    """``dataset_description.json`` and ``.bidsignore`` of the derivative dataset; ``roots`` from
    :func:`dataset_roots` become its ``DatasetLinks`` (the names :func:`bids_uri` uses) and its
    ``SourceDatasets``."""
    generated_by: dict[str, Any] = {"Name": "bids_rim", "Version": __version__, "CodeURL": CODE_URL}
    container = container_entry()
    if container:
        generated_by["Container"] = container
    links = {name: Path(root).as_uri() for name, root in roots.items()}
    description = {
        "Name": "bids_rim: paramagnetic rim lesions from QSM and FLAIR",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": uri} for uri in links.values()],
        "DatasetLinks": links,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / ".bidsignore", BIDSIGNORE)
    return atomic_write_json(output_dir / "dataset_description.json", description)


def dataset_owner(folder: Path) -> str | None:
    """Who made the dataset in ``folder``: the first ``GeneratedBy`` name of its
    ``dataset_description.json`` ("unnamed" when it has none, ``None`` when there is no such file)."""
    description = folder / "dataset_description.json"
    if not description.is_file():
        return None
    try:
        generated_by = json.loads(description.read_text()).get("GeneratedBy") or [{}]
        first = generated_by[0] if isinstance(generated_by, list) else generated_by
        return str(first.get("Name") or "unnamed")
    except (OSError, ValueError, AttributeError, IndexError, KeyError, TypeError):  # unreadable or not BIDS
        return "unnamed"
