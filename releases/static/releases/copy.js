// Copy buttons: shown only where the clipboard works; the page is complete without them.
document.addEventListener("DOMContentLoaded", () => {
  // A code block that scrolls sideways must be reachable from the keyboard.
  for (const pre of document.querySelectorAll("pre:not([tabindex])")) pre.tabIndex = 0;
  if (!navigator.clipboard) return;
  for (const button of document.querySelectorAll("button.copy")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const text = source.value !== undefined ? source.value : source.textContent;
      await navigator.clipboard.writeText(text.trim());
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = label; }, 1500);
    });
  }
});
