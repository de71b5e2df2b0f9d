"""The picture of docs/dicom-pacs.md: the DICOM results as a viewer shows them after a PACS round trip.

Runs what the page describes on the real CT of the tests (dicom_case.py): a throwaway Orthanc is
started, the CT pushed (``pacs send``), ``predict --pacs … --send-results`` run with the demo model,
then the SEG, parametric map and report are fetched back from the PACS (WADO-RS) and drawn from
those objects alone — SEG segments as outlines and the parametric map's real-world values as a
colour overlay on the CT slice, the report's coded evaluations and numbers beside them. Nothing is
taken from result.json or heatmap.nrrd. Orthanc is stopped at the end.

    python Testing/render_dicom_results.py [--output Resources/Screenshots/dicom_results.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "Testing"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402

import orthanc_server  # noqa: E402
import realdata  # noqa: E402
from dicom_case import identified_ct, write_segmentation  # noqa: E402


def fetch_results(server, study: str, folder: Path) -> dict[str, Path]:
    """The SEG, parametric map and report of the study, fetched back from the PACS (one file each)."""
    from TACEResponseLib.pacs.endpoint import Credentials, parse_endpoint
    from TACEResponseLib.pacs.transfer import fetch_series_to, find_series

    endpoint = parse_endpoint(server.url, credentials=Credentials(orthanc_server.USER, server.password))
    found = {}
    for series in find_series(endpoint, study):
        kind = {"SEG": "SEG", "SR": "SR"}.get(series.modality) or ("PM" if "parametric map" in series.description
                                                                     else None)
        if kind:
            found[kind] = next(fetch_series_to(endpoint, study, series, folder / kind).glob("*.dcm"))
    return found


def render(ct: Path, objects: dict[str, Path], png: Path) -> Path:
    from matplotlib.lines import Line2D

    from TACEResponseLib.core.figures import new_figure, save_figure
    from TACEResponseLib.imaging.views import display_plane
    from TACEResponseLib.imaging.volume_io import read_volume
    from TACEResponseLib.pacs.readback import parametric_map_on, report_groups, segments_on

    reference = read_volume(ct)
    masks = segments_on(objects["SEG"], reference)
    heat = parametric_map_on(objects["PM"], reference)
    groups, comments = report_groups(objects["SR"])
    k = int(np.argmax(masks[1].reshape(masks[1].shape[0], -1).sum(axis=1)))  # the largest slice of tumour #1
    background = display_plane(reference, reference, 0, k)
    shown_heat = display_plane(reference.with_array(heat), reference, 0, k).image
    outlines = {n: display_plane(reference.with_array(m.astype(np.uint8)), reference, 0, k).image for n, m in masks.items()}
    rows, cols = np.nonzero(sum(outlines.values()) + (shown_heat > 0))
    pad = 40
    r0, r1, c0, c1 = max(rows.min() - pad, 0), rows.max() + pad, max(cols.min() - pad, 0), cols.max() + pad

    figure = new_figure(14.0, 5.4, facecolor="white")
    grid = figure.add_gridspec(1, 3, width_ratios=[1.0, 1.15, 1.0], wspace=0.32)
    colours = {1: "cyan", 2: "lime"}
    for column, zoom in ((0, False), (1, True)):
        ax = figure.add_subplot(grid[column])
        window = (slice(r0, r1), slice(c0, c1)) if zoom else (slice(None), slice(None))
        ax.imshow(background.image[window], cmap="gray", vmin=-160, vmax=240, aspect=background.aspect)
        if zoom:
            shown = ax.imshow(np.ma.masked_where(shown_heat[window] <= 1e-3, shown_heat[window]), cmap="inferno",
                              vmin=0, vmax=1, alpha=0.6, aspect=background.aspect)
            bar = figure.colorbar(shown, ax=ax, fraction=0.04, pad=0.01)
            bar.set_label("parametric map (relative class activation, 0-1)", fontsize=8)
        for number, outline in outlines.items():
            if outline[window].any():
                ax.contour(outline[window], levels=[0.5], colors=colours.get(number, "yellow"), linewidths=1.2)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("CT slice %d with the SEG's segments" % k if not zoom else "zoomed: SEG outlines + parametric map",
                     fontsize=10)
    labels = {g.segment_number: g.label for g in groups if g.segment_number}
    figure.axes[0].legend(handles=[Line2D([], [], color=colours.get(n, "yellow"), label=f"SEG segment {n}: {labels[n]}")
                                   for n in sorted(masks) if n in labels], loc="lower left", fontsize=8)
    text = figure.add_subplot(grid[2])
    text.axis("off")
    lines = ["TID 1500 report (read back from the PACS)", ""]
    for group in groups:
        response = group.evaluations.get("Response Evaluation", "")
        lines.append(f"{group.label}: {response}" if response else group.label)
        probabilities = [(k.replace("Predicted probability of ", ""), v) for k, v in group.numbers.items()
                         if k.startswith("Predicted probability of") and not k.endswith("(SD)")]
        lines += [f"    {name}: {value:.2f}" for name, value in probabilities]
        if "Volume" in group.numbers:
            lines.append(f"    volume {group.numbers['Volume']:.1f} ml")
        flag = group.evaluations.get("Image unlike the model's training data")
        if flag:
            lines.append(f"    unlike training data: {flag}")
        if "Nomogram risk group" in group.evaluations:
            lines.append(f"    nomogram risk group: {group.evaluations['Nomogram risk group']}")
        lines.append("")
    lines += [c for c in comments[:1]]
    text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8.2, family="monospace", wrap=True)
    figure.suptitle("DICOM results fetched back from Orthanc (SEG, parametric map, SR) - RESEARCH USE ONLY, "
                    "SYNTHETIC demo model", fontsize=11, color="darkred")
    return save_figure(figure, png, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "Resources" / "Screenshots" / "dicom_results.png"))
    args = parser.parse_args()
    why = orthanc_server.missing()
    if why:
        print(f"cannot render: {why}", file=sys.stderr)
        return 2
    import pydicom

    from TACEResponseLib.cli import main as cli

    with tempfile.TemporaryDirectory(prefix="tace-render-dicom-") as tmp:
        root = Path(tmp)
        ct = identified_ct(lambda name: realdata.fetch(name), root / "ct")
        seg = write_segmentation(ct, root / "tumour.seg.nrrd")
        study = str(pydicom.dcmread(next(ct.iterdir()), stop_before_pixels=True).StudyInstanceUID)
        server = orthanc_server.start(root / "orthanc")
        try:
            os.environ["TACE_PACS_USER"], os.environ["TACE_PACS_PASSWORD"] = orthanc_server.USER, server.password
            assert cli(["pacs", "send", str(ct), "--to", server.url]) == 0
            assert cli(["predict", "--segmentation", str(seg), "--output", str(root / "out"), "--device", "cpu",
                        "--pacs", server.url, "--study", study, "--send-results"]) == 0
            objects = fetch_results(server, study, root / "back")
        finally:
            server.stop()
        print(render(ct, objects, Path(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
