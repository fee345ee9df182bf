// Tabs for the "Use this model" box. Without this script every panel shows, one below the other,
// each under its own heading; with it, one panel at a time behind an ARIA tab list.
document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("[data-tabs]")) {
    const panels = [...box.querySelectorAll(":scope > .panel[data-tab]")];
    if (panels.length < 2) continue;
    const list = document.createElement("div");
    list.className = "tablist";
    list.setAttribute("role", "tablist");
    list.setAttribute("aria-label", "How to download");
    const tabs = panels.map((panel, index) => {
      const tab = document.createElement("button");
      tab.type = "button";
      tab.id = `${panel.id}-tab`;
      tab.textContent = panel.dataset.tab;
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-controls", panel.id);
      panel.setAttribute("role", "tabpanel");
      panel.setAttribute("aria-labelledby", tab.id);
      tab.addEventListener("click", () => select(index));
      tab.addEventListener("keydown", (event) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
        if (step) { select((index + step + panels.length) % panels.length); tabs[(index + step + panels.length) % panels.length].focus(); }
      });
      list.append(tab);
      return tab;
    });
    const select = (chosen) => {
      tabs.forEach((tab, index) => {
        const on = index === chosen;
        tab.setAttribute("aria-selected", String(on));
        tab.tabIndex = on ? 0 : -1;
        panels[index].hidden = !on;
      });
    };
    panels[0].before(list);
    box.classList.add("tabbed");
    select(0);
  }
});
