"""The browser page's "DICOM" download, fetched as the page fetches it — over HTTP and the page's websocket
from a running ``tace-response web`` (the command as a user starts it), without a browser.

The session opens the real CT series (dicom_case.py) with its tumours, "No survival nomogram" is chosen and
Predict is pressed (the trigger of the page's own Predict button, read from the page template the session
serves, as the browser reads it), and the DICOM download is asked
for like the page's button asks (``trigger('tace_download', ['dicom'])``). The zip that comes back holds the
prediction's DICOM objects: each opens with highdicom, each is in the CT's study, the SEG placed on the
CT's grid gives back the tumours drawn (built with numpy in dicom_case.py), the parametric map gives back the
heatmap the page offers as its "Heatmap NRRD" download, and the report names the tumours the page shows.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import zipfile

import numpy as np
import pydicom
import pytest

pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
aiohttp = pytest.importorskip("aiohttp")
hd = pytest.importorskip("highdicom", reason="highdicom is not installed")

from dicom_case import identified_ct, tumour_masks, write_segmentation  # noqa: E402
from dicom_helpers import SOP_CLASSES  # noqa: E402
from web_client import WslinkClient, start_launcher  # noqa: E402

pytestmark = pytest.mark.slow
KIND_OF_CLASS = {uid: kind for kind, uid in SOP_CLASSES.items()}


@pytest.fixture(scope="module")
def case(realdata, tmp_path_factory):
    root = tmp_path_factory.mktemp("web-dicom")
    ct = identified_ct(realdata, root / "ct")
    return {"root": root, "ct": ct, "seg": write_segmentation(ct, root / "tumour.seg.nrrd")}


def _trigger_of(template: str, button: str) -> str:
    """The trigger the page's button ``button`` (its id) calls when clicked, from the page template."""
    tag = re.search(rf'<\w+(?:\s+[^\s=>]+(?:="[^"]*")?)*?\s+id="{button}"(?:\s+[^\s=>]+(?:="[^"]*")?)*\s*/?>',
                    template)  # attribute values may hold ">" (e.g. :disabled="n > 0")
    click = re.search(r"""@click="trigger\('([^']+)'""", tag.group(0)) if tag else None
    assert click, f"no button {button!r} with a trigger in the page the session serves"
    return click.group(1)


async def _download(client: WslinkClient, kind: str) -> bytes:
    """What the page's download button ``kind`` fetches (``trigger('tace_download', [kind])``)."""
    answer = await client.call("trame.trigger", "tace_download", [kind], {}, timeout=300)
    assert "result" in answer, answer
    assert not (await client.state()).get("error"), f"{kind} download: {(await client.state())['error']}"
    assert isinstance(answer["result"], bytes), (kind, type(answer["result"]))
    return answer["result"]


async def _download_dicom(url: str, timeout: float = 300.0) -> tuple[bytes, bytes, dict]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        response = await http.post(f"{url}/sessions", headers={"Origin": url}, allow_redirects=False)
        assert response.status == 303, (response.status, await response.text())
        sid = response.headers["Location"].split("/")[2]
        info = await (await http.post(f"{url}/s/{sid}/paraview/", headers={"Origin": url})).json()
        ws = await http.ws_connect(f"{url.replace('http', 'ws', 1)}/s/{sid}/ws", headers={"Origin": url},
                                   max_msg_size=0)
        client = WslinkClient(ws)
        assert "result" in await client.hello(info["secret"])
        state = await client.state()
        assert not state["error"] and len(state["volumes"]) == 1, (state["error"], state["volumes"])
        # "No survival nomogram" chosen in the form (the demo nomogram needs a portal phase and clinical values)
        assert {"title": "No survival nomogram", "value": ""} in state["nomograms"]
        await client.call("trame.state.update", [{"key": "nomogram", "value": ""}])
        end = time.monotonic() + 60
        while state["blockers"] or state["nomogram"]:
            assert time.monotonic() < end, f"Predict stays disabled: {state['blockers']}"
            await asyncio.sleep(0.5)
            state = await client.state()
        predict = _trigger_of(state["trame__template_main"], "tace-predict")
        await client.call("trame.trigger", predict, [], {})
        end = time.monotonic() + timeout
        # the summary is shown first; the downloads are enabled once the files they are made from exist
        assert 'id="tace-download-dicom"' in state["trame__template_main"]
        assert re.search(r'<[^<>]*id="tace-download-dicom"[^<>]*:disabled="!downloads_ready"', state["trame__template_main"]) \
            or re.search(r'<[^<>]*:disabled="!downloads_ready"[^<>]*id="tace-download-dicom"', state["trame__template_main"])
        while not (state.get("stage") == "done" and state.get("result") and state.get("downloads_ready")):
            assert not state.get("error"), state["error"]
            assert time.monotonic() < end, f"no result after {timeout:.0f} s (stage {state.get('stage')!r})"
            await asyncio.sleep(1.0)
            state = await client.state()
        dicom, heatmap = await _download(client, "dicom"), await _download(client, "nrrd")
        await ws.close()
        return dicom, heatmap, state["result"]


def test_the_dicom_download_of_a_web_session_holds_every_object_readable(case):
    launcher = start_launcher(case["root"] / "launcher", "--no-demo", "--device", "cpu", "--image", str(case["ct"]),
                              "--segmentation", str(case["seg"]))
    try:
        payload, heatmap_nrrd, shown = asyncio.run(_download_dicom(launcher.url))
    finally:
        launcher.stop()
    assert payload[:2] == b"PK", payload[:20]
    source = pydicom.dcmread(next(case["ct"].iterdir()), stop_before_pixels=True)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        names = archive.namelist()
        assert "dicom.json" in names
        objects = {name: archive.read(name) for name in names if name.endswith(".dcm")}
    kinds = {}
    for name, data in objects.items():
        dataset = pydicom.dcmread(io.BytesIO(data))
        kind = KIND_OF_CLASS[str(dataset.SOPClassUID)]
        kinds.setdefault(kind, []).append(name)
        read = {"SEG": hd.seg.Segmentation.from_dataset, "SR": hd.sr.Comprehensive3DSR.from_dataset}.get(
            kind, hd.Image.from_dataset)(dataset)  # highdicom opens each object
        assert read.StudyInstanceUID == source.StudyInstanceUID and read.SeriesInstanceUID != source.SeriesInstanceUID
        assert "RESEARCH USE ONLY" in read.SeriesDescription
    tumours = len(shown["tumours"])
    assert {k: len(v) for k, v in kinds.items()} == {"SEG": 1, "PM": 1, "SR": 1, "SC": tumours}
    from TACEResponseLib.imaging.geometry import in_grid
    from TACEResponseLib.imaging.volume_io import read_volume
    from TACEResponseLib.pacs.readback import parametric_map_on, report_groups, segments_on
    from TACEResponseLib.prediction.cam import read_heatmap

    ct = read_volume(case["ct"])
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(objects[kinds["SEG"][0]])))
    masks = segments_on(seg, ct)
    drawn = tumour_masks(ct.shape_kji)
    assert tumours == len(drawn)
    for number, expected in enumerate(drawn, start=1):
        np.testing.assert_array_equal(masks[number], expected)
    nrrd = case["root"] / "heatmap.nrrd"
    nrrd.write_bytes(heatmap_nrrd)
    shown_heatmap = in_grid(read_heatmap(nrrd), ct)
    assert shown_heatmap.max() > 0.5
    np.testing.assert_allclose(parametric_map_on(io.BytesIO(objects[kinds["PM"][0]]), ct),
                               shown_heatmap, atol=1e-6)
    groups, comments = report_groups(hd.sr.Comprehensive3DSR.from_dataset(
        pydicom.dcmread(io.BytesIO(objects[kinds["SR"][0]]))))
    assert [g.label for g in groups[:tumours]] == [t["label"] for t in shown["tumours"]]
    assert any("RESEARCH USE ONLY" in c for c in comments)
