"""Fetch the TemplateFlow templates bids_rim uses into ``TEMPLATEFLOW_HOME``, and check them.

    TEMPLATEFLOW_HOME=/opt/templateflow python scripts/fetch_templates.py [SPACE ...]

Run at image build time (see the Dockerfile) so that the app never downloads at run time, or on
a machine with internet before copying ``TEMPLATEFLOW_HOME`` to one without. For each template
space (default: MNI152NLin2009cAsym) it fetches the T1w image and the brain mask at 1 mm and
2 mm (TemplateFlow ``res-01``/``res-02``), with the same queries the app makes, then checks
that every file is a readable NIfTI whose voxel size is the resolution asked for. It exits with
a one-line error per missing or broken file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

DEFAULT_SPACES = ("MNI152NLin2009cAsym",)

#: TemplateFlow resolution index -> voxel size in mm (true of the MNI152 family and most others).
RESOLUTIONS_MM = {1: 1.0, 2: 2.0}

#: The two images the app reads per space and resolution (``preproc.template_space``).
QUERIES = (
    {"suffix": "T1w", "desc": None},
    {"suffix": "mask", "desc": "brain"},
)


def fetch_template_file(space: str, resolution: int, query: dict[str, object]) -> Path:
    """Download (or find) one template file; raise FileNotFoundError naming it when absent."""
    from templateflow import api

    described = f"tpl-{space} res-{resolution:02d} {query}"
    try:
        found = api.get(space, resolution=resolution, **query)
    except Exception as error:  # templateflow raises assorted network errors
        raise FileNotFoundError(f"{described}: could not be fetched ({type(error).__name__}: {error})") from error
    files = found if isinstance(found, list) else [found]
    if len(files) != 1:
        raise FileNotFoundError(f"{described}: expected one file, TemplateFlow matched {len(files)}")
    return Path(files[0])


def check_template_file(path: Path, spacing_mm: float) -> None:
    """Raise ValueError naming ``path`` unless it is a non-empty 3D NIfTI with ``spacing_mm`` voxels."""
    if not path.is_file() or path.stat().st_size == 0:
        raise ValueError(f"{path}: missing or empty (an unfetched TemplateFlow placeholder)")
    try:
        image = nib.load(path)
    except Exception as error:
        raise ValueError(f"{path}: not a readable NIfTI ({error})") from error
    zooms_mm = np.asarray(image.header.get_zooms()[:3], dtype=float)
    if len(image.shape) != 3 or not np.allclose(zooms_mm, spacing_mm, atol=0.01):
        raise ValueError(f"{path}: shape {image.shape}, voxels {zooms_mm.tolist()} mm; expected 3D at {spacing_mm} mm")


def fetch_templates(spaces: tuple[str, ...]) -> list[Path]:
    """Fetch and check every file of ``spaces``; raise with one line per problem found."""
    fetched, problems = [], []
    for space in spaces:
        for resolution, spacing_mm in RESOLUTIONS_MM.items():
            for query in QUERIES:
                try:
                    path = fetch_template_file(space, resolution, query)
                    check_template_file(path, spacing_mm)
                except (FileNotFoundError, ValueError) as error:
                    problems.append(str(error))
                else:
                    fetched.append(path)
    if problems:
        raise RuntimeError("\n".join(problems))
    return fetched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spaces", nargs="*", default=list(DEFAULT_SPACES), help="TemplateFlow template names")
    args = parser.parse_args(argv)
    try:
        fetched = fetch_templates(tuple(args.spaces))
    except RuntimeError as error:
        print(f"fetch_templates: {error}", file=sys.stderr)
        return 1
    for path in fetched:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
