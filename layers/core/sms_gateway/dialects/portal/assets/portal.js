// The account portal's script: small conveniences only; every page works without it.
"use strict";

document.addEventListener("submit", (event) => {
  // A form with data-confirm asks first (revoking a credential, rotating a secret).
  const question = event.target.dataset ? event.target.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
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
