// The lists page: after "Update now", follow GET /api/v1/lists/update until the update ends, then reload.
(function () {
  "use strict";
  var box = document.getElementById("lists-update");
  if (!box) { return; }
  var label = document.getElementById("update-state");

  function show(state) {
    box.setAttribute("data-state", state);
    label.textContent = box.getAttribute("data-msg-" + state) || state;
  }

  function poll() {
    fetch("/api/v1/lists/update", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (job) {
        show(job.state);
        if (job.state === "running" || job.state === "reloading") { window.setTimeout(poll, 1000); }
        else { window.location.reload(); }
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }

  document.body.addEventListener("htmx:afterRequest", function (evt) {
    if (evt.detail.elt.id === "update-now" && evt.detail.successful) { show("running"); poll(); }
  });
  var state = box.getAttribute("data-state");
  if (state === "running" || state === "reloading") { poll(); }
})();
