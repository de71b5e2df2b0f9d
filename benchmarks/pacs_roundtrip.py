"""How long one study takes through a real PACS: fetch the CT, predict, write the DICOM results, send them back.

Starts Debian's Orthanc (with its DICOMweb plugin) on free ports in a temporary folder, pushes the real
20-slice Siemens CT of the tests (Testing/dicom_case.py), then for DICOMweb and for DIMSE, in this
process with the demo model loaded once: fetch the series (WADO-RS / C-GET), predict it (reading
included), write SEG + parametric map + TID 1500 report + 2 secondary captures, send them (STOW-RS /
C-STORE). Then the whole ``tace-response predict --pacs … --send-results`` as a user runs it, in a new
process (imports and model loading included). Medians over ``--runs``; prints a table and writes
benchmarks/results/pacs_roundtrip.json. Orthanc is stopped at the end whatever happens.

    python benchmarks/pacs_roundtrip.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, print_table, save_results

sys.path.insert(0, str(REPO / "Testing"))

import orthanc_server  # noqa: E402
import realdata  # noqa: E402
from dicom_case import identified_ct, write_segmentation  # noqa: E402


def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def in_process(server, protocol: str, ct: Path, seg: Path, study: str, predictor, root: Path) -> dict:
    from TACEResponseLib.pacs.endpoint import Credentials, parse_endpoint
    from TACEResponseLib.pacs.export import write_dicom_results
    from TACEResponseLib.pacs.transfer import fetch_study_series, send_folder
    from TACEResponseLib.prediction.case import predict_case

    address = server.url if protocol == "dicomweb" else server.dimse
    endpoint = parse_endpoint(address, credentials=Credentials(orthanc_server.USER, server.password, source="bench"))
    fetch_s, (folder,) = timed(lambda: fetch_study_series(endpoint, study, None, 1, ["CT"], root / "fetched"))
    predict_s, result = timed(lambda: predict_case(predictor, [folder], seg, root / "out"))
    write_s, _ = timed(lambda: write_dicom_results(result, folder, seg, folder, root / "dicom"))
    send_s, outcome = timed(lambda: send_folder(root / "dicom", endpoint))
    assert outcome.complete, outcome.summary()
    return {"fetch_s": fetch_s, "predict_s": predict_s, "write_dicom_s": write_s, "send_s": send_s,
            "total_s": fetch_s + predict_s + write_s + send_s}


def command(server, protocol: str, seg: Path, study: str, root: Path) -> float:
    address = server.url if protocol == "dicomweb" else server.dimse
    env = dict(os.environ, TACE_PACS_USER=orthanc_server.USER, TACE_PACS_PASSWORD=server.password)
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "TACEResponseLib.cli", "predict", "--segmentation", str(seg),
                          "--output", str(root), "--device", "cpu", "--pacs", address, "--study", study,
                          "--send-results"], capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    why = orthanc_server.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    from TACEResponseLib.networks.catalog import default_bundle_name
    from TACEResponseLib.pacs.endpoint import Credentials, parse_endpoint
    from TACEResponseLib.pacs.transfer import send_folder
    from TACEResponseLib.prediction.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="tace-pacs-bench-") as tmp:
        root = Path(tmp)
        ct = identified_ct(lambda name: realdata.fetch(name), root / "ct")
        seg = write_segmentation(ct, root / "tumour.seg.nrrd")
        import pydicom

        study = str(pydicom.dcmread(next(ct.iterdir()), stop_before_pixels=True).StudyInstanceUID)
        server = orthanc_server.start(root / "orthanc")
        try:
            push = parse_endpoint(server.url, credentials=Credentials(orthanc_server.USER, server.password))
            push_s, outcome = timed(lambda: send_folder(ct, push))
            assert outcome.complete, outcome.summary()
            predictor = Predictor(default_bundle_name(), device="cpu")
            predictor.engine  # noqa: B018 - the model opened (and its graph exported) once, outside the timings
            rows = []
            for protocol in ("dicomweb", "dimse"):
                in_process(server, protocol, ct, seg, study, predictor, root / f"warm-{protocol}")  # warm-up
                runs = [in_process(server, protocol, ct, seg, study, predictor, root / f"{protocol}-{n}")
                        for n in range(args.runs)]
                row = {"protocol": protocol, **{key: statistics.median(r[key] for r in runs) for key in runs[0]}}
                row["command_s"] = statistics.median(command(server, protocol, seg, study, root / f"cli-{protocol}-{n}")
                                                     for n in range(args.runs))
                rows.append(row)
        finally:
            server.stop()
    columns = ["protocol", "fetch_s", "predict_s", "write_dicom_s", "send_s", "total_s", "command_s"]
    print(f"one study: real CT 20 × 512 × 512 (JPEG 2000), 2 tumours, demo model; CT pushed in {push_s:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    print_table(rows, columns)
    save_results("pacs_roundtrip", {"runs": args.runs, "push_ct_s": push_s, "load_average": os.getloadavg(),
                                    "case": "real CT 20x512x512 JPEG 2000, 2 tumours, demo model, backend auto",
                                    "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
