// Choosing files through the File System Access API for the upload page (upload.js), and resuming
// without choosing again: the page's own pickers and drop zone hand over files with their handles
// (upload_handles.js), and the uploads begun in this browser that the site says are unfinished are
// offered to Resume, which opens their kept handles and sends only what storage does not hold yet.
// upload.js calls `releasesUploadResume(page)` with what it needs from the page; browsers without
// the API keep the page's file inputs and get an offer that finds nothing.
window.releasesUploadResume = (page) => {
  "use strict";
  const { handles, memoryKey, api, show, sending, forgetHandle, pick, plural, mib } = page;
  const $ = (id) => document.getElementById(id);

  function choose(entries) {
    pick(entries);
    $("upload-file").value = "";
    if ($("upload-folder")) $("upload-folder").value = "";
    const count = entries.length;
    $("upload-picked").textContent = count ? `${plural(count, "file")} chosen (${mib(entries.reduce((sum, e) => sum + e.file.size, 0))}): ` +
      entries.map((e) => e.inside).sort().slice(0, 5).join(", ") + (count > 5 ? ", …" : "") : "Nothing chosen.";
  }

  async function choosing(picker) {
    try {
      choose(await picker());
    } catch (error) {
      if (error.name !== "AbortError") {  // AbortError: the picker was closed
        $("upload-progress").hidden = false;
        show(`The files could not be read: ${error.message}`, true);
      }
    }
  }

  // The uploads begun in this browser that the site says are unfinished; the others are forgotten.
  async function unfinished() {
    let records;
    try {
      records = await handles.kept(memoryKey);
    } catch (error) {
      return [];
    }
    const open = [];
    for (const record of records) {
      try {
        if ((await api(record.statusUrl)).state === "uploading") open.push(record);
        else await handles.forget(record.id);
      } catch (error) {
        if (error.status === 404) await forgetHandle(record.id);  // gone, or no longer this user's to see
      }
    }
    return open.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  async function offerResume() {
    const records = await unfinished();
    $("upload-resume").hidden = !records.length;
    $("upload-resume-text").textContent = `${plural(records.length, "unfinished upload")} begun in this browser: ` +
      `${records.map((record) => record.path).join(", ")}. Resume sends only what storage does not hold yet; ` +
      "nothing needs choosing again.";
  }

  async function resume() {
    $("upload-resume-button").disabled = true;
    const records = await unfinished();
    const queue = [];
    const problems = [];
    for (const record of records) {
      const opened = await handles.reopen(record);
      if (opened.problem) {
        problems.push(opened.problem);
        await forgetHandle(record.id);
      } else {
        queue.push({ file: opened.file, path: record.path, handle: record.handle, root: record.root,
          expected: record.expected, resumes: record.id });
      }
    }
    $("upload-resume").hidden = true;
    $("upload-resume-problems").hidden = !problems.length;
    $("upload-resume-problems").textContent = problems.join(" ");
    if (queue.length) await sending(queue, queue.length);
    else $("upload-resume-button").disabled = false;
  }

  if (handles.supported) {
    for (const row of document.querySelectorAll(".file-input-row")) row.hidden = true;
    $("upload-pick").hidden = false;
    $("upload-pick-files").addEventListener("click", () => choosing(handles.pickFiles));
    $("upload-pick-folder").addEventListener("click", () => choosing(handles.pickFolder));
    const zone = $("upload-drop");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      const entries = handles.dropped(event.dataTransfer);  // asked for now, while the drop lasts
      choosing(() => entries);
    });
    $("upload-resume-button").addEventListener("click", resume);
    offerResume();
  }
  return { offerResume };
};
