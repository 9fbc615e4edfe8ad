// The account portal's script: small conveniences only; every page works without it.
"use strict";

document.addEventListener("submit", (event) => {
  // A form with data-confirm asks first (revoking a credential, rotating a secret).
  const question = event.target.dataset ? event.target.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  // A second click while the form is on its way sends nothing more: its button is off until the answer comes (a
  // send, a new credential or a rotated secret carries a once-per-form key besides, for a reload or no script).
  const button = event.target.querySelector ? event.target.querySelector("button[type=submit]") : null;
  if (button && !event.defaultPrevented) {
    window.setTimeout(() => { button.disabled = true; }, 0);
  }
});

window.addEventListener("pageshow", (event) => {
  // A page the back button brings back from the browser's memory has its buttons usable again.
  if (event.persisted) {
    document.querySelectorAll("button[type=submit]:disabled").forEach((button) => { button.disabled = false; });
  }
});

document.addEventListener("click", (event) => {
  // "Copy" next to a secret shown once.
  const button = event.target.closest("button.copy");
  if (!button) return;
  const secret = button.parentElement.querySelector("code.secret");
  if (secret && navigator.clipboard) {
    navigator.clipboard.writeText(secret.textContent).then(() => { button.textContent = "Copied"; });
  }
});
