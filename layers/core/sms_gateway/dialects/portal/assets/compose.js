// The Compose page's live preview: parts, encoding and cost as you type (the dry run behind /portal/compose/preview),
// and the CSV file read into the form. Without it the page still sends; Send checks everything in any case.
"use strict";

(() => {
  const form = document.querySelector("form.compose");
  const panel = document.getElementById("preview");
  if (!form || !panel) return;
  const csvField = form.querySelector("input[name=csv]");
  const csvName = form.querySelector("input[name=csv_name]");
  const fileInput = document.getElementById("csv-file");
  const attached = document.getElementById("csv-attached");
  const csrf = form.querySelector("input[name=csrf_token]").value;
  const status = document.getElementById("preview-status");
  const problems = document.getElementById("preview-problems");
  const MAX_CSV_BYTES = 64 * 1024;
  document.getElementById("csv-block").hidden = false;
  const DEBOUNCE_MS = 300;
  let timer = null;
  let latest = 0;

  const show = (id, value) => { document.getElementById(id).textContent = String(value); };

  function listProblems(lines) {
    problems.replaceChildren(...lines.map((line) => {
      const item = document.createElement("li");
      item.textContent = line;
      return item;
    }));
  }

  function render(answer) {
    show("preview-parts", answer.parts);
    show("preview-encoding", answer.encoding +
      (answer.ucs2_characters.length ? ` (because of ${answer.ucs2_characters.join(" ")})` : ""));
    show("preview-per-part", answer.characters_per_part);
    show("preview-recipients", answer.recipients);
    show("preview-cost", answer.total_cost);
    show("preview-balance", answer.balance);
    const lines = [
      ...answer.csv_problems,
      ...answer.invalid.map((entry) => `${entry.to}: ${entry.reason}`),
      ...answer.opted_out.map((entry) => `${entry.to}: ${entry.reason} (left out)`),
    ];
    if (!answer.balance_sufficient) lines.push(`The cost is more than the balance of ${answer.balance} credits.`);
    listProblems(lines);
    status.textContent = answer.would_be_accepted
      ? "Ready to send. Nothing is sent or charged until you press Send."
      : "Not ready to send yet: add the text and recipients, and fix what is listed below.";
    status.dataset.ready = answer.would_be_accepted ? "yes" : "no";
  }

  async function update() {
    const mine = ++latest;
    const body = {
      sender: form.elements.sender.value,
      text: form.elements.text.value,
      numbers: form.elements.numbers.value,
      csv: csvField.value,
    };
    try {
      const response = await fetch(panel.dataset.url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (mine !== latest) return; // a newer preview is on its way
      if (response.ok) {
        render(answer);
      } else {
        status.textContent = answer.message;
        status.dataset.ready = "no";
        listProblems([]);
      }
    } catch (error) {
      if (mine === latest) status.textContent = "The preview is unavailable just now; Send still checks everything.";
    }
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = window.setTimeout(update, DEBOUNCE_MS);
  }

  // The CSV the form carries (its numbers in the hidden field), named, with its Remove button: also after a refused
  // send brings the form back, when the picker shows no file but the numbers are still attached.
  function attach(name, content) {
    csvField.value = content;
    csvName.value = content ? name : "";
    document.getElementById("csv-name").textContent = name;
    attached.hidden = !content;
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    if (!file) {
      attach("", "");
      schedule();
      return;
    }
    if (file.size > MAX_CSV_BYTES) {
      attach("", "");
      fileInput.value = "";
      status.textContent = `${file.name} is over ${MAX_CSV_BYTES / 1024} KB: split it into smaller files.`;
      return;
    }
    const reader = new FileReader();
    reader.onload = () => { attach(file.name, String(reader.result)); schedule(); };
    reader.readAsText(file);
  });
  document.getElementById("csv-remove").addEventListener("click", () => {
    attach("", "");
    fileInput.value = "";
    schedule();
  });
  form.addEventListener("input", (event) => { if (event.target !== fileInput) schedule(); });
  form.addEventListener("change", (event) => { if (event.target.name === "sender") schedule(); });
  update();
})();
