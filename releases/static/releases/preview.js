// A preview under the admin's Markdown fields (release notes, model card): the site renders and
// sanitises the text exactly as it will when saved, and the page shows the result.
document.addEventListener("DOMContentLoaded", () => {
  const url = document.body.dataset.previewUrl || "/admin/releases/version/preview/";
  const csrf = document.querySelector("[name=csrfmiddlewaretoken]");
  for (const area of document.querySelectorAll("textarea#id_notes, textarea#id_description")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button markdown-preview-button";
    button.textContent = "Preview";
    button.setAttribute("aria-label", `Preview the ${area.id === "id_notes" ? "release notes" : "model card"}`);
    const output = document.createElement("div");
    output.className = "markdown-preview";
    output.setAttribute("aria-live", "polite");
    output.hidden = true;
    button.addEventListener("click", async () => {
      const body = new FormData();
      body.append("text", area.value);
      const response = await fetch(url, { method: "POST", body, credentials: "same-origin",
        headers: csrf ? { "X-CSRFToken": csrf.value } : {} });
      const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
      output.hidden = false;
      if (data.error) {
        output.textContent = data.error;
        output.classList.add("errornote");
      } else {
        output.classList.remove("errornote");
        output.innerHTML = data.html || "<p>(empty)</p>";  // sanitised by the site, as the page will show it
      }
    });
    area.after(button, output);
  }
});
