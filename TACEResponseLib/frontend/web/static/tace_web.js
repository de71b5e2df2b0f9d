// Uploads of tace-response web: checked here first (type, size, count), then streamed one file per
// request to the session's upload address, which checks again while writing to the session folder.
(function () {
  const DICOM_OFFSET = 128;

  async function isDicom(file) {
    if (file.size < DICOM_OFFSET + 4) return false;
    const head = new Uint8Array(await file.slice(DICOM_OFFSET, DICOM_OFFSET + 4).arrayBuffer());
    return String.fromCharCode(...head) === "DICM";
  }

  function megabytes(bytes) {
    return Math.round(bytes / 1e6);
  }

  async function upload(fileList, kind, limits) {
    const files = Array.from(fileList || []);
    if (!files.length) return null;
    limits = limits || {};
    const accept = (limits.accept || {})[kind] || [];
    if (limits.max_files && files.length > limits.max_files) {
      return { error: `${files.length} files selected; at most ${limits.max_files} may be uploaded` };
    }
    const problems = [];
    for (const file of files) {
      const name = file.name.toLowerCase();
      const known = accept.some((suffix) => name.endsWith(suffix)) || (kind === "image" && (await isDicom(file)));
      if (!known) {
        problems.push(`${file.name}: not an accepted ${kind} file (${accept.join(", ")}${kind === "image" ? " or DICOM files" : ""})`);
      } else if (limits.max_file_bytes && file.size > limits.max_file_bytes) {
        problems.push(`${file.name}: ${megabytes(file.size)} MB is more than the ${megabytes(limits.max_file_bytes)} MB allowed per file`);
      }
    }
    if (problems.length) return { error: problems.join("; ") };
    const batch = Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
    const used = new Set();
    for (let i = 0; i < files.length; i++) {
      let name = files[i].name;
      if (used.has(name)) name = `${String(i).padStart(5, "0")}_${name}`; // same name in two sub-folders
      used.add(name);
      const url = `upload?kind=${kind}&batch=${batch}&name=${encodeURIComponent(name)}`;
      let response;
      try {
        response = await fetch(url, { method: "POST", body: files[i], credentials: "same-origin" });
      } catch (error) {
        return { error: `${files[i].name}: upload failed (${error})` };
      }
      if (!response.ok) {
        let message = response.statusText;
        try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
        return { error: message };
      }
    }
    const folder = (files[0].webkitRelativePath || "").split("/")[0];
    const label = folder || files[0].name.replace(/(\.nii)?\.[^.]*$/i, "");
    return { kind, batch, label, count: files.length, names: files.slice(0, 5).map((f) => f.name) };
  }

  function kindOf(fileList) {
    const files = Array.from(fileList || []);
    return files.length === 1 && files[0].name.toLowerCase().endsWith(".seg.nrrd") ? "segmentation" : "image";
  }

  // The result's details: scrolled into view in the panel (the summary stays in the action bar).
  function showResult() {
    window.setTimeout(() => {
      const result = document.getElementById("tace-result");
      if (result) result.scrollIntoView({ behavior: "smooth", block: "start" });
    }, 50);
  }

  window.taceWeb = { upload, kindOf, showResult };
})();
