// The audit & users page: the "json-list" htmx extension is json-enc (static/console.js) for a form with
// multi-valued fields: the checked boxes marked data-list are sent as one array (a teacher's groups).
(function () {
  "use strict";
  htmx.defineExtension("json-list", {
    onEvent: function (name, evt) {
      if (name === "htmx:configRequest") { evt.detail.headers["Content-Type"] = "application/json"; }
    },
    encodeParameters: function (xhr, parameters, elt) {
      xhr.overrideMimeType("text/json");
      var form = elt.closest("form") || elt, out = {};
      form.querySelectorAll("[data-list][name]").forEach(function (box) {
        if (!(box.name in out)) { out[box.name] = []; }
        if (box.checked) { out[box.name].push(box.value); }
      });
      parameters.forEach(function (value, key) {
        if (key in out || value === "") { return; }
        out[key] = value;
      });
      return JSON.stringify(out);
    }
  });
})();
