// Small behaviours of the portal's pages, kept out of the HTML: the
// Content-Security-Policy allows no inline script (docs/security.md, section 18).
(function () {
  "use strict";

  function ready() {
    // A form that finishes what a second-factor check interrupted sends itself;
    // its button stays for a browser without JavaScript.
    document.querySelectorAll("form[data-auto-submit]").forEach(function (form) {
      form.submit();
    });
  }

  // "Go back" links return to the page before; without history they follow their href.
  document.addEventListener("click", function (event) {
    var link = event.target.closest("a[data-history-back]");
    if (link && window.history.length > 1) {
      event.preventDefault();
      window.history.back();
    }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
