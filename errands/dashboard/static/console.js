// errands dashboard: swap in the live part of a page when the server pushes
// it (Server-Sent Events). Written for errands; no framework, no build step.
// The HTML comes from the server's templates, which escape every value.
"use strict";
(function () {
  var live = document.getElementById("live");
  var state = document.getElementById("live-state");
  if (!live || !live.dataset.stream || !window.EventSource) {
    return;
  }
  function show(text, on) {
    if (state) {
      state.textContent = text;
      state.className = "live-state" + (on ? " on" : "");
    }
  }
  var source = new EventSource(live.dataset.stream);
  source.addEventListener("open", function () {
    show("live", true);
  });
  source.addEventListener("update", function (event) {
    live.innerHTML = event.data;
    live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
    show("live", true);
  });
  source.addEventListener("error", function () {
    // The browser opens the stream again by itself.
    show("reconnecting…", false);
  });
  window.addEventListener("pagehide", function () {
    source.close();
  });
})();
