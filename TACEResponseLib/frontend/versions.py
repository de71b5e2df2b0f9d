"""Which 3D Slicer runs the module: 5.10 and later (Python 3.12).

Slicer 5.8 and earlier run Python 3.9, which the library's code and its dependency ranges
(runtime-requirements.txt) do not support; there the module shows :func:`support_problem`'s
message instead of failing on import. This file is imported before anything else of the
library, so it must stay valid Python 3.9 (Testing/test_slicer_versions.py parses it so).
"""

from __future__ import annotations

from typing import Optional, Sequence

#: the oldest Slicer release the module supports (major, minor)
MINIMUM_SLICER = (5, 10)
#: the oldest Python the library runs on (Slicer 5.10 ships 3.12)
MINIMUM_PYTHON = (3, 10)


def version_text(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def support_problem(slicer_version: Sequence[int], python_version: Sequence[int]) -> Optional[str]:
    """Why this Slicer cannot run the module (one paragraph for the panel), or None when it can."""
    slicer_version, python_version = tuple(slicer_version[:2]), tuple(python_version[:2])
    if slicer_version >= MINIMUM_SLICER and python_version >= MINIMUM_PYTHON:
        return None
    return ("TACE Response needs 3D Slicer {} or later (Python {} or later); this is Slicer {} with Python {}. "
            "Install the current 3D Slicer release and install TACE Response there.".format(version_text(MINIMUM_SLICER), version_text(MINIMUM_PYTHON),
                            version_text(slicer_version), version_text(python_version)))
