// The admin's upload page for large files (releases/admin_uploads.py): one file, several, or a whole
// folder (each keeping its path inside the folder), one after the other; each goes to storage in
// parts, several at once. Each part is hashed here (SHA-256, sent with the part so that storage
// refuses other bytes), put at a URL the site signs for that part and checksum, and retried with a
// fresh URL when refused or cut. Parts storage already holds with the same checksum (after a
// reload, or a dropped connection) are skipped: the page first hashes its own parts at those
// numbers and the site keeps the upload only if they are the same bytes (else it starts another).
// Where the browser lets the page keep file handles (upload_handles.js), every file's upload is
// started at once and its handle kept, so that after a reload one Resume button (upload_resume.js)
// carries on with them all; elsewhere the same files are chosen again. Empty files have no parts:
// the site stores each in one request. Completion is the site's: it checks the
// parts, the size and the SHA-256 before the file is recorded.
(() => {
  "use strict";
  const root = document.getElementById("direct-upload");
  const form = document.getElementById("upload-form");
  if (!root || !form) return;
  const $ = (id) => document.getElementById(id);
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const parallel = Number(root.dataset.parallel) || 4;
  const ATTEMPTS = 5;
  const MEMORY = 256 * 1048576;  // parts being hashed are held in memory: at most this much at once
  const handles = window.releasesUploadHandles || { supported: false };
  let running = null;  // the upload in progress, for the Abort button
  let picked = null;  // files chosen through the pickers or dropped (with their handles), if any

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const backoff = (attempt) => Math.min(1000 * 2 ** attempt, 15000);  // ms before try attempt + 1
  const mib = (bytes) => `${(bytes / 1048576).toFixed(1)} MiB`;
  const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;
  const duration = (seconds) => (seconds >= 90 ? `${Math.round(seconds / 60)} min` : `${Math.max(1, Math.round(seconds))} s`);
  // What was typed, kept for this version in this browser: after a reload, choosing the same files
  // again is all it takes (the parts already stored are kept).
  const memoryKey = `releases-upload-${root.dataset.versionUrl}`;

  const RESUME = "choose the file again to resume (the parts already stored are kept).";

  // A failed call says whether trying it again may help (`retryable`): the site unreachable, or a
  // server error (from the site or a proxy in front of it, as while a web node restarts).
  async function api(url, body) {
    const options = { method: body === undefined ? "GET" : "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf } };
    if (body !== undefined) options.body = JSON.stringify(body);
    const response = await fetch(url, options).catch((error) => {
      throw Object.assign(new Error(`The site could not be reached (${error.message}): ${RESUME}`), { retryable: true });
    });
    const json = (response.headers.get("Content-Type") || "").includes("json");
    if (response.redirected || (response.ok && !json)) {
      // The admin sent its login page: the session ended.
      throw new Error("Your admin session has ended: log in again, then choose the file again to resume.");
    }
    const data = json ? await response.json() : {};
    if (!response.ok) {
      const message = data.error || `The site answered ${response.status} ${response.statusText}`.trim() + `: ${RESUME}`;
      throw Object.assign(new Error(message), { status: response.status, retryable: response.status >= 500 });
    }
    return data;
  }

  // Calls that do the same however often they are made (signing a part, asking an upload's state)
  // are made again, a little later each time, when the failure may pass.
  async function retried(call) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await call();
      } catch (error) {
        if (!error.retryable || attempt >= ATTEMPTS) throw error;
        await sleep(backoff(attempt));
      }
    }
  }

  async function sha256(blob) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
    let text = "";
    for (const byte of digest) text += String.fromCharCode(byte);
    return btoa(text);
  }

  // A PUT with upload progress (fetch has none); resolves with the HTTP status, 0 when the request
  // never got an answer (connection cut, or refused by the bucket's CORS rule).
  function put(run, target, blob, onProgress) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open(target.method || "PUT", target.url);
      for (const [name, value] of Object.entries(target.headers || {})) xhr.setRequestHeader(name, value);
      if (target.url.startsWith("/")) xhr.setRequestHeader("X-CSRFToken", csrf);  // the site itself
      xhr.upload.onprogress = (event) => onProgress(event.loaded);
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
      xhr.onerror = xhr.onabort = xhr.ontimeout = () => resolve({ status: 0, text: "" });
      run.requests.add(xhr);
      xhr.onloadend = () => run.requests.delete(xhr);
      xhr.send(blob);
    });
  }

  function show(message, error = false) {
    const status = $("upload-status");
    status.textContent = message;
    status.className = error ? "errornote" : "";
  }

  function stop(run) {
    run.stopped = true;
    for (const request of run.requests) request.abort();
  }

  function report(run) {
    if (run.stopped) return;  // the page says why it stopped; late progress must not hide it
    let bytes = run.doneBytes;
    for (const loaded of run.inFlight.values()) bytes += loaded;
    $("upload-bar").value = run.size ? bytes / run.size : 1;
    const kept = run.kept ? `, ${run.kept} already stored and kept` : "";
    const seconds = (Date.now() - run.startedAt) / 1000;
    const sent = bytes - run.keptBytes;  // what this page sent: the speed of the connection
    const speed = seconds > 2 && sent > 0 ? sent / seconds : 0;
    const pace = speed ? `, ${mib(speed)}/s, about ${duration((run.size - bytes) / speed)} left` : "";
    show(`${mib(bytes)} of ${mib(run.size)}: ${run.doneParts} of ${plural(run.partCount, "part")} stored${kept}${pace}.`);
  }

  function ended(failed) {
    $("upload-abort").hidden = true;  // nothing left to abort
    $("upload-bar").classList.toggle("failed", failed);
  }

  // Why storage refused a part, in its own words when it gave some (S3's XML, the site's JSON).
  function refusal({ status, text }) {
    if (!status) return "the connection failed";
    const message = /<Message>([^<]*)<\/Message>/.exec(text) || /"error":\s*"([^"]*)"/.exec(text);
    return `storage answered ${status}${message ? `: ${message[1]}` : ""}`;
  }

  async function sendPart(run, number, blob, checksum) {
    for (let attempt = 1; ; attempt++) {
      if (run.stopped) throw new Error("stopped");
      const target = await retried(() => api(`${run.links.sign}${number}/sign/`, { sha256: checksum }));
      const answer = await put(run, target, blob, (loaded) => { run.inFlight.set(number, loaded); report(run); });
      run.inFlight.delete(number);
      if (answer.status >= 200 && answer.status < 300) return;
      if (run.stopped) throw new Error("stopped");
      if (attempt >= ATTEMPTS) {
        throw new Error(`Part ${number} could not be sent (${refusal(answer)}, ${ATTEMPTS} times). ` +
          "Choose the file again to resume.");
      }
      // A refused part (an expired URL: 403) gets a fresh URL at once; a cut connection waits a little.
      await sleep(answer.status === 403 ? 200 : backoff(attempt));
    }
  }

  async function worker(run, upload, file, stored, checksums) {
    while (run.next <= upload.part_count && !run.stopped) {
      const number = run.next++;
      const start = (number - 1) * upload.part_size;
      const blob = file.slice(start, Math.min(start + upload.part_size, file.size));
      const checksum = checksums[number] || await sha256(blob);  // hashed already if storage holds it
      checksums[number] = checksum;
      const held = stored.get(number);
      if (held && held.size === blob.size && held.sha256 === checksum) {
        run.kept += 1;
        run.keptBytes += blob.size;
      } else {
        await sendPart(run, number, blob, checksum);
      }
      run.doneBytes += blob.size;
      run.doneParts += 1;
      report(run);
    }
  }

  async function finish(upload, checksums) {
    show("All parts are stored; checking them and the file's size…");
    const parts = Object.entries(checksums).map(([number, sha]) => ({ number: Number(number), sha256: sha }));
    let state = await api(upload.links.complete, { parts });
    while (state.state === "hashing") {
      show("Checking the file's SHA-256 in storage…");
      await sleep(1000);
      state = await retried(() => api(upload.links.status));
    }
    listed(state);
    await forgetHandle(state.id);  // done, or failed its check: nothing to resume either way
    if (state.state === "done") {
      $("upload-bar").value = 1;
      ended(false);
      show(`Done: ${state.file.path}, ${state.file.size.toLocaleString()} bytes, SHA-256 ${state.file.sha256}.`);
      return true;
    }
    ended(true);
    show(state.detail || `The upload is ${state.state_label}.`, true);
    return false;
  }

  function listed(state) {
    document.getElementById("no-uploads")?.remove();
    const row = document.querySelector(`#upload-list tr[data-upload="${state.id}"]`) || document.createElement("tr");
    row.dataset.upload = state.id;
    row.dataset.path = state.path;
    row.dataset.state = state.state;
    row.replaceChildren(...[state.path, mib(state.size), state.state_label, state.detail, ""].map((text) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      return cell;
    }));
    $("upload-list").tBodies[0].prepend(row);
  }

  function part(file, upload, number) {
    const start = (number - 1) * upload.part_size;
    return file.slice(start, Math.min(start + upload.part_size, file.size));
  }

  const begin = (item) => api(root.dataset.startUrl, { path: item.path, size: item.file.size, sha256: item.expected || "" });

  // A found upload whose parts storage holds: the site keeps it only if those parts are this file's
  // bytes (it starts another otherwise). The checksums computed here are the worker's too.
  async function sameFile(started, item, checksums) {
    if (!started.stored.length) return started;
    show(`Checking the ${plural(started.stored.length, "part")} already stored against ${started.path}…`);
    const parts = [];
    for (const held of started.stored) {
      checksums[held.number] = await sha256(part(item.file, started, held.number));
      parts.push({ number: held.number, sha256: checksums[held.number] });
    }
    const matched = await api(started.links.match, { parts, sha256: item.expected || "" });
    if (!matched.kept) {
      for (const number of Object.keys(checksums)) delete checksums[number];
      await keepHandle(matched, item, started.id);
    }
    return matched;
  }

  async function upload(item, label = "") {
    if (!window.crypto || !crypto.subtle) {
      throw new Error("This browser cannot compute SHA-256 here: open the admin over HTTPS.");
    }
    const file = item.file;
    const checksums = {};
    const started = await sameFile(item.started || await begin(item), item, checksums);
    const run = { id: started.id, links: started.links, size: file.size, partCount: started.part_count, next: 1,
      doneBytes: 0, doneParts: 0, kept: 0, keptBytes: 0, inFlight: new Map(), requests: new Set(), stopped: false,
      startedAt: Date.now() };
    running = run;
    $("upload-progress").hidden = false;
    $("upload-abort").hidden = false;
    $("upload-bar").classList.remove("failed");
    $("upload-name").textContent = `${label}${started.path} (${mib(file.size)}, ${plural(started.part_count, "part")})`;
    report(run);
    const stored = new Map(started.stored.map((held) => [held.number, held]));
    const fit = Math.max(1, Math.floor(MEMORY / started.part_size));
    const workers = Array.from({ length: Math.min(parallel, fit, started.part_count) },
      () => worker(run, started, file, stored, checksums));
    try {
      await Promise.all(workers);
    } catch (error) {
      stop(run);  // the other parts stop too; resuming (or choosing the file again) goes on from here
      throw error;
    }
    return run.stopped ? false : finish(started, checksums);
  }

  // The handle of each file chosen through the pickers, kept under its upload's id (under a new id
  // when the site started another); no IndexedDB (private mode) keeps nothing and loses nothing.
  async function keepHandle(started, item, replaced = null) {
    if (!item.handle) return;
    try {
      if (replaced && replaced !== started.id) await handles.forget(replaced);
      await handles.keep(memoryKey, started, item);
    } catch (error) { /* not kept: choosing the file again still resumes */ }
  }

  async function forgetHandle(id) {
    try {
      if (handles.supported) await handles.forget(id);
    } catch (error) { /* nothing kept */ }
  }

  // Empty files (a folder's .gitkeep) have no parts to send: the site stores each in one request.
  // Returns what the final message says of them.
  async function storeEmpty(items) {
    for (const item of items) {
      show(`Storing ${item.path} (empty)…`);
      await api(root.dataset.emptyUrl, { path: item.path, sha256: item.expected || "" });
    }
    return items.length ? ` ${items.map((item) => item.path).join(", ")} ${items.length === 1 ? "is" : "are"} empty, ` +
      "stored as such." : "";
  }

  // The files one after the other, the empty ones first. Files with handles are all started first,
  // so that each has an upload (and a kept handle) to resume by should the page be reloaded before its turn.
  async function send(queue, total) {
    const emptyNote = await storeEmpty(queue.filter((item) => !item.file.size));
    const inParts = queue.filter((item) => item.file.size);
    for (const item of inParts.filter((entry) => entry.handle)) {
      item.started = await begin(item);
      await keepHandle(item.started, item, item.resumes);
    }
    let done = 0;
    for (const [index, item] of inParts.entries()) {
      const label = inParts.length > 1 ? `File ${index + 1} of ${inParts.length}: ` : "";
      if (!(await upload(item, label))) break;
      done += 1;
    }
    const skipped = total - queue.length;
    if (done === inParts.length && (total > 1 || !inParts.length)) {
      show(`Done: ${total > 1 ? `all ${total} files are` : "the file is"} stored and checked` +
        `${skipped ? ` (${skipped} were already)` : ""}.${emptyNote}`);
    }
    return done === inParts.length;
  }

  // Each chosen file with its path: one file takes the path typed (or its name); several files or a
  // folder keep their names and their paths inside the folder, under the typed folder if any.
  function chosen() {
    const typed = $("upload-path").value.trim();
    const entries = picked || [...$("upload-file").files, ...($("upload-folder") ? $("upload-folder").files : [])].map(
      (file) => ({ file, inFolder: Boolean(file.webkitRelativePath),
        inside: file.webkitRelativePath ? file.webkitRelativePath.split("/").slice(1).join("/") : file.name }));
    if (entries.length === 1 && !entries[0].inFolder) return [{ ...entries[0], path: typed || entries[0].inside }];
    const prefix = typed ? `${typed.replace(/\/+$/, "")}/` : "";
    return entries.map((entry) => ({ ...entry, path: prefix + entry.inside }))
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));  // by path, as the version lists them
  }

  function remember() {
    try {
      localStorage.setItem(memoryKey, JSON.stringify({ path: $("upload-path").value, sha256: $("upload-sha256").value }));
    } catch (error) { /* private mode: nothing kept, nothing lost */ }
  }

  function recall() {
    try {
      const kept = JSON.parse(localStorage.getItem(memoryKey) || "null");
      if (kept && !$("upload-path").value) $("upload-path").value = kept.path || "";
      if (kept && !$("upload-sha256").value) $("upload-sha256").value = kept.sha256 || "";
    } catch (error) { /* nothing kept */ }
  }
  recall();

  // Sends the queue; what went wrong is said, and the Upload and Resume buttons are free again.
  async function sending(queue, total) {
    $("upload-start").disabled = true;
    $("upload-resume-button").disabled = true;
    try {
      return await send(queue, total);
    } catch (error) {
      ended(true);
      if (error.message === "stopped") return false;  // aborted: the Abort button says so
      show(error.message, true);
      if (handles.supported) offerResume();  // what was kept can be resumed from here, without a reload
      return false;
    } finally {
      $("upload-start").disabled = false;
      $("upload-resume-button").disabled = false;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const stored = new Set([...document.querySelectorAll('#upload-list tr[data-state="done"]')].map((row) => row.dataset.path));
    const all = chosen();
    const queue = all.filter((item) => !stored.has(item.path));  // files already checked and listed are kept
    if (!all.length) {
      show("Choose a file or a folder first.", true);
      $("upload-progress").hidden = false;
      return;
    }
    remember();
    const expected = queue.length === 1 ? $("upload-sha256").value.trim() : "";  // one checksum names one file
    for (const item of queue) item.expected = expected;
    $("upload-resume").hidden = true;  // what is chosen now is what goes on
    if (await sending(queue, all.length)) localStorage.removeItem(memoryKey);
  });

  $("upload-abort").addEventListener("click", async () => {
    if (!running) return;
    if (!window.confirm("Abort this upload? The parts sent so far are dropped.")) return;
    stop(running);
    ended(true);
    try {
      listed(await api(running.links.abort, {}));
      await forgetHandle(running.id);
      show("Aborted: the parts sent so far were dropped.");
    } catch (error) {
      show(error.message, true);
    }
  });

  // An unfinished upload listed below can be aborted without its file (a version with one cannot be published).
  document.querySelectorAll("#upload-list .abort-listed").forEach((button) => {
    button.addEventListener("click", async () => {
      if (!window.confirm("Abort this unfinished upload? The parts stored so far are dropped.")) return;
      try {
        const state = await api(button.dataset.abortUrl, {});
        listed(state);
        await forgetHandle(state.id);
        offerResume();
      } catch (error) {
        $("upload-progress").hidden = false;
        show(error.message, true);
      }
    });
  });
  // Choosing through the File System Access API, and Resume: upload_resume.js.
  const { offerResume } = window.releasesUploadResume({ handles, memoryKey, api, show, sending, forgetHandle,
    pick: (entries) => { picked = entries; }, plural, mib });
  for (const input of [$("upload-file"), $("upload-folder")]) input?.addEventListener("change", () => { picked = null; });
})();
