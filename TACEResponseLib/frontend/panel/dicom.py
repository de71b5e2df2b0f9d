"""DICOM results from the front ends (Slicer panel, web page): Qt-free, on what they hold in memory.

Both show a result whose reference volume is an MRML node; the DICOM series it came from is named
apart: in Slicer by the node's ``DICOM.instanceUIDs`` attribute (what Slicer's DICOM module sets when
it loads a series) and the DICOM database's file of each instance; in the web page by the DICOM
folder the case was opened from. :func:`export_dicom` writes the objects through
:func:`TACEResponseLib.pacs.export.write_dicom_results`; :func:`zipped` packs them for a download.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path

#: the attribute Slicer's DICOM module puts on a volume node loaded from DICOM (space-separated SOP Instance UIDs)
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def dicom_source_files(volume_node: Any, database: Any) -> list[Path]:
    """The files of the DICOM series ``volume_node`` was loaded from (``database``: Slicer's
    ``slicer.dicomDatabase``, whose ``fileForInstance(uid)`` gives an instance's file)."""
    name = volume_node.GetName() if volume_node is not None else "(no volume)"
    uids = ((volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) if volume_node is not None else "") or "").split()
    if not uids:
        raise InputError(f"volume {name!r} was not loaded from DICOM (Slicer's DICOM module); DICOM results refer "
                         "to the source series, so load the study through the DICOM module first")
    if database is None:
        raise InputError("Slicer's DICOM database is not open; open it in the DICOM module")
    files = [Path(database.fileForInstance(uid) or "") for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not str(path) or str(path) == "." or not path.is_file()]
    if missing:
        raise InputError(f"volume {name!r}: {len(missing)} of its {len(uids)} DICOM file(s) are no longer in the DICOM "
                         "database or on disk")
    return files


def export_dicom(result, reference, heatmap, segmentation, source: Sequence[str | Path] | str | Path,
                 folder: str | Path):
    """The result's DICOM objects into ``folder`` (see :mod:`TACEResponseLib.pacs.export`); ``reference``,
    ``heatmap``, ``segmentation``: the shown volumes (in memory), ``source``: their DICOM series."""
    from TACEResponseLib.pacs.export import write_dicom_results
    from TACEResponseLib.pacs.source import check_dicom_writer

    check_dicom_writer()
    if result is None:
        raise InputError("there is no result to write as DICOM; predict first")
    return write_dicom_results(result, reference, segmentation, source, folder, heatmap=heatmap)


def zipped(folder: str | Path, archive: str | Path) -> Path:
    """The DICOM files of ``folder`` (and its ``dicom.json``) in one zip, written atomically."""
    folder, archive = Path(folder), Path(archive)
    with atomic_path(archive) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(folder.iterdir()):
                if path.is_file() and (path.suffix == ".dcm" or path.name == "dicom.json"):
                    bundle.write(path, path.name)
    return archive
