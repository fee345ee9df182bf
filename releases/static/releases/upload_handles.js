// Files chosen through the File System Access API (Chromium, Edge) for the upload page (upload.js):
// through its pickers or dropped on the page. Each started upload's file handle is kept in this
// browser's IndexedDB under the upload's id, with the file's path in the release, its size and its
// lastModified, so that after a reload the page can open the same files again by itself: no file
// is chosen again. A kept file that changed (another size or modification time) is not used.
// Entries go once their upload is done or aborted. Browsers without the API (Firefox, Safari) get
// `supported: false` and the page's file inputs.
window.releasesUploadHandles = (() => {
  "use strict";
  const supported = typeof window.showOpenFilePicker === "function" &&
    typeof window.showDirectoryPicker === "function" && "indexedDB" in window;
  const DATABASE = "releases-uploads";
  const STORE = "uploads";
  let database = null;

  function open() {
    database ||= new Promise((resolve, reject) => {
      const request = indexedDB.open(DATABASE, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" }).createIndex("page", "page");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return database;
  }

  // One transaction; resolves once it is committed, with what the request `act` returns asked for.
  async function transact(mode, act) {
    const db = await open();
    return new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, mode);
      const request = act(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve(request ? request.result : undefined);
      transaction.onerror = transaction.onabort = () => reject(transaction.error);
    });
  }

  // `page` names the version's upload page; `item` is {handle, root, file, path, expected}.
  function keep(page, upload, item) {
    const record = { id: upload.id, page, path: upload.path, size: item.file.size,
      lastModified: item.file.lastModified, handle: item.handle, root: item.root || null,
      expected: item.expected || "", statusUrl: upload.links.status };
    return transact("readwrite", (store) => { store.put(record); });
  }

  const forget = (id) => transact("readwrite", (store) => { store.delete(id); });
  const kept = (page) => transact("readonly", (store) => store.index("page").getAll(page));

  // Every file in a folder (and its folders), with its path inside it.
  async function filesIn(folder, prefix = "") {
    const found = [];
    for await (const [name, handle] of folder.entries()) {
      if (handle.kind === "file") found.push({ handle, inside: prefix + name, inFolder: true });
      else found.push(...await filesIn(handle, `${prefix}${name}/`));
    }
    return found;
  }

  const withFiles = (entries) => Promise.all(entries.map(async (entry) => ({ ...entry, file: await entry.handle.getFile() })));

  async function pickFiles() {
    const handles = await window.showOpenFilePicker({ multiple: true });
    return withFiles(handles.map((handle) => ({ handle, inside: handle.name, inFolder: false })));
  }

  async function pickFolder() {
    const folder = await window.showDirectoryPicker({ mode: "read" });
    return withFiles(withRoot(await filesIn(folder), folder));
  }

  // The folder the user chose, kept beside each of its files: one permission for it covers them all.
  const withRoot = (entries, folder) => entries.map((entry) => ({ ...entry, root: folder }));

  // Dropped files and folders. Their handles are asked for during the drop event itself (the
  // browser empties the DataTransfer after it); one dropped folder is like a chosen one.
  function dropped(dataTransfer) {
    const pending = [...dataTransfer.items].filter((item) => item.kind === "file").map((item) => item.getAsFileSystemHandle());
    return (async () => {
      const handles = (await Promise.all(pending)).filter(Boolean);
      const entries = [];
      for (const handle of handles) {
        if (handle.kind === "file") entries.push({ handle, inside: handle.name, inFolder: handles.length > 1 });
        else entries.push(...withRoot(await filesIn(handle, handles.length > 1 ? `${handle.name}/` : ""), handle));
      }
      return withFiles(entries);
    })();
  }

  // A kept file opened again: {file}, or {problem} saying why it cannot be used and what to do.
  // Called from a click: asking for permission needs the user's gesture.
  async function reopen(record) {
    const asked = record.root || record.handle;
    let permission = await asked.queryPermission({ mode: "read" });
    if (permission !== "granted") permission = await asked.requestPermission({ mode: "read" });
    if (permission !== "granted") {
      return { problem: `${record.path}: this page was not allowed to read it again; choose it again.` };
    }
    let file;
    try {
      file = await record.handle.getFile();
    } catch (error) {
      return { problem: `${record.path} cannot be read where it was chosen (${error.message}); choose it again.` };
    }
    if (file.size !== record.size || file.lastModified !== record.lastModified) {
      return { problem: `${record.path} changed since its upload began (its size or modification time is ` +
        "not the same); choose it again: the parts already stored are kept only if they are its bytes." };
    }
    return { file };
  }

  return { supported, keep, forget, kept, pickFiles, pickFolder, dropped, reopen };
})();
