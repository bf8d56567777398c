// crackscope review: keyboard shortcuts, heatmap controls, per-tile scores on hover, marks of defect regions, live
// queue. No dependencies.
(function () {
  "use strict";
  const page = document.body.dataset.page;

  // Shortcuts stay off while a person types (name field, filters), but not after using the slider or a checkbox.
  function typing(event) {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || !target) return true;
    if (target.isContentEditable || ["TEXTAREA", "SELECT"].includes(target.tagName)) return true;
    return target.tagName === "INPUT" && !["range", "checkbox", "radio", "button", "submit"].includes(target.type);
  }

  function liveQueue() {
    const last = Number(document.body.dataset.lastRowid || 0);
    const url = document.body.dataset.summaryUrl;
    const banner = document.getElementById("live-banner");
    if (!url || !banner) return;
    setInterval(function () {
      fetch(url, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (summary) { if (summary && summary.last_rowid > last) banner.hidden = false; })
        .catch(function () {});
    }, 5000);
  }

  function heatmapControls() {
    const heat = document.getElementById("heat");
    const on = document.getElementById("heat-on");
    const slider = document.getElementById("heat-opacity");
    const value = document.getElementById("heat-value");
    if (!heat || !on || !slider) return null;
    slider.value = heat.dataset.default || slider.value;
    on.checked = Number(slider.value) > 0;
    function apply() {
      heat.style.opacity = on.checked ? String(Number(slider.value) / 100) : "0";
      if (value) value.textContent = slider.value + "%";
    }
    slider.addEventListener("input", function () { on.checked = true; apply(); });
    on.addEventListener("change", apply);
    apply();
    return function toggle() {
      on.checked = !on.checked;
      if (on.checked && Number(slider.value) === 0) slider.value = 60;
      apply();
    };
  }

  function boxControls() {
    const boxes = document.getElementById("boxes");
    const on = document.getElementById("boxes-on");
    if (!boxes || !on) return null;
    on.addEventListener("change", function () { boxes.hidden = !on.checked; });
    return function toggle() { on.checked = !on.checked; boxes.hidden = !on.checked; };
  }

  function tileScores() {
    const viewer = document.getElementById("viewer");
    const data = document.getElementById("tiles-data");
    const tip = document.getElementById("tip");
    const outline = document.getElementById("tile-outline");
    if (!viewer || !data || !tip || !outline) return;
    const tiles = JSON.parse(data.textContent || "[]");
    const width = Number(viewer.dataset.width), height = Number(viewer.dataset.height);
    if (!tiles.length || !width || !height) return;
    viewer.addEventListener("mousemove", function (event) {
      const rect = viewer.getBoundingClientRect();
      const x = (event.clientX - rect.left) / rect.width * width;
      const y = (event.clientY - rect.top) / rect.height * height;
      const under = tiles.filter(function (t) { return x >= t[0] && x < t[0] + t[2] && y >= t[1] && y < t[1] + t[3]; })
        .sort(function (a, b) { return b[4] - a[4]; });
      if (!under.length) { tip.hidden = true; outline.hidden = true; return; }
      const best = under[0];
      outline.style.left = (100 * best[0] / width) + "%";
      outline.style.top = (100 * best[1] / height) + "%";
      outline.style.width = (100 * best[2] / width) + "%";
      outline.style.height = (100 * best[3] / height) + "%";
      outline.hidden = false;
      tip.textContent = under.slice(0, 4).map(function (t) {
        return "tile " + t[0] + "," + t[1] + " (" + t[2] + "x" + t[3] + "): " + t[4].toFixed(3);
      }).join("\n") + (under.length > 1 ? "\n(" + under.length + " overlapping tiles here)" : "");
      tip.hidden = false;
      const left = event.clientX - rect.left + 14, top = event.clientY - rect.top + 14;
      tip.style.left = Math.min(left, rect.width - tip.offsetWidth - 4) + "px";
      tip.style.top = Math.min(top, rect.height - tip.offsetHeight - 4) + "px";
    });
    viewer.addEventListener("mouseleave", function () { tip.hidden = true; outline.hidden = true; });
  }

  // Mark mode: the reviewer drags a box round a defect (one the model missed, or where it is). The picture fills
  // the viewer, whose aspect ratio is the frame's, so a point's share of the viewer is its share of the original frame
  // (data-width x data-height), whatever size of copy the page shows.
  function markMode() {
    const viewer = document.getElementById("viewer");
    const button = document.getElementById("mark-start");
    const form = document.getElementById("mark-form");
    const draft = document.getElementById("mark-draft");
    const hint = document.getElementById("mark-hint");
    if (!viewer || !button || !form || !draft) return null;
    const width = Number(viewer.dataset.width), height = Number(viewer.dataset.height);
    const least = Number(form.dataset.min || 4);
    if (!width || !height) return null;
    const idle = hint ? hint.textContent : "";
    let active = false, start = null, sent = false;

    function say(text) { if (hint) hint.textContent = text; }
    function setActive(on) {
      active = on && !button.disabled;
      start = null;
      draft.hidden = true;
      viewer.classList.toggle("drawing", active);
      button.setAttribute("aria-pressed", String(active));
      say(active ? "drag a box round a defect, one box each (Esc cancels)" : idle);
    }
    function framePoint(event) {
      const rect = viewer.getBoundingClientRect();
      const x = Math.min(Math.max((event.clientX - rect.left) / rect.width, 0), 1);
      const y = Math.min(Math.max((event.clientY - rect.top) / rect.height, 0), 1);
      return { x: x * width, y: y * height };
    }
    function boxOf(a, b) {  // whole pixels of the frame, whichever way the box was dragged
      const left = Math.round(Math.min(a.x, b.x)), right = Math.round(Math.max(a.x, b.x));
      const top = Math.round(Math.min(a.y, b.y)), bottom = Math.round(Math.max(a.y, b.y));
      return { x: left, y: top, w: right - left, h: bottom - top };
    }
    function show(box) {
      draft.style.left = (100 * box.x / width) + "%";
      draft.style.top = (100 * box.y / height) + "%";
      draft.style.width = (100 * box.w / width) + "%";
      draft.style.height = (100 * box.h / height) + "%";
      draft.hidden = false;
    }
    button.addEventListener("click", function () { setActive(!active); });
    viewer.addEventListener("dragstart", function (event) { if (active) event.preventDefault(); });
    viewer.addEventListener("pointerdown", function (event) {
      if (!active || event.button !== 0) return;
      event.preventDefault();
      start = framePoint(event);
      viewer.setPointerCapture(event.pointerId);
      show(boxOf(start, start));
    });
    viewer.addEventListener("pointermove", function (event) {
      if (active && start) show(boxOf(start, framePoint(event)));
    });
    viewer.addEventListener("pointerup", function (event) {
      if (!active || !start) return;
      const box = boxOf(start, framePoint(event));
      start = null;
      if (box.w < least || box.h < least) {
        draft.hidden = true;
        say("too small: drag a box at least " + least + " px of the frame on each side (Esc cancels)");
        return;
      }
      if (sent) return;
      sent = true;
      ["x", "y", "w", "h"].forEach(function (key) { form.elements[key].value = String(box[key]); });
      form.submit();
    });
    viewer.addEventListener("pointercancel", function () { start = null; draft.hidden = true; });
    window.addEventListener("pageshow", function (event) {  // back to this page from the browser's cache
      if (event.persisted) { sent = false; setActive(false); }
    });
    return {
      button: button,
      active: function () { return active; },
      toggle: function () { setActive(!active); },
      cancel: function () { setActive(false); },
      say: say,
    };
  }

  function itemPage() {
    const toggleHeat = heatmapControls();
    const toggleBoxes = boxControls();
    const marker = markMode();
    tileScores();
    // One decision per key press: a held key repeats keydown, which would decide the next item too.
    const form = document.getElementById("decision-form");
    let sent = false;
    if (form) {
      form.addEventListener("submit", function (event) {
        if (marker && marker.active()) {  // no decision while drawing a mark
          event.preventDefault();
          marker.say("finish the mark or cancel it (Esc) before deciding");
          return;
        }
        if (sent) { event.preventDefault(); return; }
        sent = true;
        form.querySelectorAll("button").forEach(function (b) { b.setAttribute("aria-busy", "true"); });
      });
      window.addEventListener("pageshow", function (event) {  // back to this page from the browser's cache
        if (event.persisted) { sent = false; form.querySelectorAll("button").forEach(function (b) { b.removeAttribute("aria-busy"); }); }
      });
    }
    document.addEventListener("keydown", function (event) {
      if (typing(event) || event.repeat) return;
      const key = event.key.toLowerCase();
      if (marker && (key === "m" || (key === "escape" && marker.active()))) {
        event.preventDefault();
        if (marker.button.disabled) {
          const name = document.getElementById("reviewer-name");
          if (name) name.focus();
        } else if (key === "m") {
          marker.toggle();
        } else {
          marker.cancel();
        }
        return;
      }
      if (marker && marker.active()) return;  // while drawing, keys neither decide nor leave the page
      const button = document.querySelector('#decision-form button[data-key="' + key + '"]');
      if (button) {
        event.preventDefault();
        if (button.disabled) {
          const name = document.getElementById("reviewer-name");
          if (name) name.focus();
          return;
        }
        button.click();
        return;
      }
      const link = { n: "next", p: "previous" }[key];
      if (link) {
        const anchor = document.getElementById(link);
        if (anchor) { event.preventDefault(); window.location.href = anchor.href; }
        return;
      }
      if (key === "h" && toggleHeat) { event.preventDefault(); toggleHeat(); }
      if (key === "b" && toggleBoxes) { event.preventDefault(); toggleBoxes(); }
    });
  }

  if (page === "queue") liveQueue();
  if (page === "item") itemPage();
})();
