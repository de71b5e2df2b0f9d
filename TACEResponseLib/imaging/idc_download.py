"""What of HCC-TACE-Seg the importer needs, planned from IDC's series index and fetched with idc-index.

IDC (NCI Imaging Data Commons) hosts the collection as ``collection_id == "hcc_tace_seg"``. The
``idc-index-data`` wheel ships IDC's series index as a parquet file, so the plan — which patients,
series and gigabytes — is computed here without any network: the studies holding a radiologist SEG
(Modality SEG, no ``analysis_result_id``, described "Segmentation": each patient's first, pre-TACE
study), their CT series and those SEGs; not the post-TACE studies nor the AI SEGs, about half of the
collection's bytes. :func:`download` hands that list of series to idc-index (s5cmd, from IDC's
public bucket), with its progress bar; ``sync`` resumes a partial download.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import check_output_folder

logger = logging.getLogger(__name__)

COLLECTION_ID = "hcc_tace_seg"
RADIOLOGIST_SEG_DESCRIPTION = "segmentation"
#: IDC's folder layout of a download (idc-index's default): collection/patient/study/modality_series
DIR_TEMPLATE = "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"


@dataclass
class DownloadPlan:
    """The series to fetch and what they weigh, from the index shipped with idc-index-data."""

    index_version: str
    patients: int
    series: int
    ct_series: int
    seg_series: int
    files: int
    megabytes: float
    collection_series: int
    collection_megabytes: float
    series_uids: list[str] = field(default_factory=list)

    @property
    def gigabytes(self) -> float:
        """GB of 1000 MB, as the index's ``series_size_MB`` are counted."""
        return self.megabytes / 1000.0

    def describe(self) -> str:
        return (f"HCC-TACE-Seg from IDC (index {self.index_version}): {self.patients} patients, {self.series} series "
                f"({self.ct_series} CT of the pre-TACE studies + {self.seg_series} radiologist SEGs), {self.files} files, "
                f"{self.gigabytes:.1f} GB ({self.megabytes:,.0f} MB) of the collection's {self.collection_megabytes / 1000.0:.1f} GB "
                f"({self.collection_series} series)")


#: the index columns the plan needs
INDEX_COLUMNS = ["collection_id", "analysis_result_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                 "Modality", "SeriesDescription", "instanceCount", "series_size_MB"]


def read_index():
    """The collection's rows of IDC's series index as shipped by idc-index-data (a pandas DataFrame)."""
    import pandas as pd

    try:
        import idc_index_data
    except ImportError:
        raise InputError("the download plan needs the idc-index-data package (pip install idc-index)") from None
    table = pd.read_parquet(idc_index_data.IDC_INDEX_PARQUET_FILEPATH, columns=INDEX_COLUMNS,
                            filters=[("collection_id", "==", COLLECTION_ID)])
    return table, str(idc_index_data.__version__)


def plan_download(index=None, version: str = "") -> DownloadPlan:
    """The pre-TACE studies' CT series and the radiologist SEGs of every patient."""
    if index is None:
        index, version = read_index()
    collection = index[index["collection_id"] == COLLECTION_ID]
    if collection.empty:
        raise InputError(f"IDC's index {version} lists no collection {COLLECTION_ID!r}")
    described = collection["SeriesDescription"].fillna("").str.strip().str.lower()
    radiologist = collection[(collection["Modality"] == "SEG") & collection["analysis_result_id"].isna()
                             & (described == RADIOLOGIST_SEG_DESCRIPTION)]
    studies = set(radiologist["StudyInstanceUID"])
    chosen = collection[collection["StudyInstanceUID"].isin(studies)
                        & ((collection["Modality"] == "CT") | collection["SeriesInstanceUID"].isin(
                            set(radiologist["SeriesInstanceUID"])))]
    return DownloadPlan(
        version, int(chosen["PatientID"].nunique()), int(len(chosen)), int((chosen["Modality"] == "CT").sum()),
        int((chosen["Modality"] == "SEG").sum()), int(chosen["instanceCount"].sum()),
        float(chosen["series_size_MB"].astype(float).sum()), int(len(collection)),
        float(collection["series_size_MB"].astype(float).sum()), sorted(chosen["SeriesInstanceUID"]))


def _reach(host: str, port: int = 443, timeout: float = 10.0) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


def download(plan: DownloadPlan, folder: str | Path, *, progress: bool = True,
             reach: Callable[[str], None] | None = None) -> Path:
    """Fetch the plan's series into ``folder`` with idc-index (resumes: files already there are kept).

    One InputError when IDC's storage cannot be reached (no network) or the download fails.
    """
    folder = check_output_folder(folder)
    try:
        from idc_index import index as idc
    except ImportError:
        raise InputError("downloading needs the idc-index package (pip install idc-index)") from None
    host = urlparse(getattr(idc, "aws_endpoint_url", "https://s3.amazonaws.com")).hostname or "s3.amazonaws.com"
    try:
        (reach or _reach)(host)
    except OSError as exc:
        raise InputError(f"cannot reach IDC's storage ({host}): {exc.strerror or exc}; no network? The plan needs "
                         f"{plan.gigabytes:.1f} GB; run again where the internet is reachable "
                         "(a partial download resumes)") from None
    folder.mkdir(parents=True, exist_ok=True)
    client = idc.IDCClient()
    try:
        client.download_from_selection(downloadDir=str(folder), seriesInstanceUID=plan.series_uids,
                                       show_progress_bar=progress, use_s5cmd_sync=True, dirTemplate=DIR_TEMPLATE)
    except Exception as exc:  # noqa: BLE001 - s5cmd and idc-index raise several types
        raise InputError(f"the download into {folder} stopped: {str(exc).strip().splitlines()[0][:200]} "
                         "(run again to resume)") from None
    return folder
