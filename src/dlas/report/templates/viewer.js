"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const data = JSON.parse(document.getElementById("viewer-data").textContent);
  const colours = {};
  data.sources.forEach(function (s) { colours[s.name] = s.colour; });
  const hiddenSources = new Set();
  const hiddenStructures = new Set();
  const select = document.getElementById("case-select");
  const slider = document.getElementById("slice-slider");
  const label = document.getElementById("slice-label");
  const svg = document.getElementById("slice-view");
  const image = document.getElementById("ct-image");
  const layer = document.getElementById("contours");
  const table = document.getElementById("case-metrics");
  let caseIndex = 0;
  let sliceIndex = 0;

  data.cases.forEach(function (c, i) {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = c.id;
    select.appendChild(option);
  });

  function cell(tag, text) {
    const el = document.createElement(tag);
    el.textContent = text;
    return el;
  }

  function renderMetrics(c) {
    table.replaceChildren();
    table.appendChild(cell("caption", "Metrics of case " + c.id));
    const head = document.createElement("thead");
    const top = document.createElement("tr");
    top.appendChild(cell("th", "Structure"));
    top.appendChild(cell("th", "Model"));
    data.metric_labels.forEach(function (l) { top.appendChild(cell("th", l)); });
    head.appendChild(top);
    table.appendChild(head);
    const body = document.createElement("tbody");
    c.metrics.forEach(function (row) {
      data.models.forEach(function (m, i) {
        const tr = document.createElement("tr");
        if (i === 0) {
          const th = cell("th", row.structure);
          th.rowSpan = data.models.length;
          tr.appendChild(th);
          tr.className = "first";
        }
        const name = cell("td", m);
        name.style.color = colours[m];
        name.style.fontWeight = "bold";
        tr.appendChild(name);
        row.values[m].forEach(function (v) { tr.appendChild(cell("td", v)); });
        body.appendChild(tr);
      });
    });
    table.appendChild(body);
  }

  function applyVisibility() {
    layer.querySelectorAll("g.contour").forEach(function (g) {
      const hidden = hiddenSources.has(g.dataset.source) || hiddenStructures.has(g.dataset.structure);
      g.style.display = hidden ? "none" : "";
    });
  }

  function renderSlice() {
    const c = data.cases[caseIndex];
    const s = c.slices[sliceIndex];
    image.setAttribute("href", s.img);
    layer.replaceChildren();
    data.sources.forEach(function (source) {
      const byStructure = s.contours[source.name];
      if (!byStructure) { return; }
      data.structures.forEach(function (name) {
        const lines = byStructure[name];
        if (!lines) { return; }
        const g = document.createElementNS(SVG_NS, "g");
        g.setAttribute("class", "contour");
        g.dataset.source = source.name;
        g.dataset.structure = name;
        g.setAttribute("stroke", source.colour);
        const title = document.createElementNS(SVG_NS, "title");
        title.textContent = source.name + " · " + name;
        g.appendChild(title);
        lines.forEach(function (points) {
          const line = document.createElementNS(SVG_NS, "polyline");
          line.setAttribute("points", points);
          g.appendChild(line);
        });
        layer.appendChild(g);
      });
    });
    applyVisibility();
    slider.value = String(sliceIndex);
    label.textContent = "slice " + (sliceIndex + 1) + " / " + c.slices.length + " · z = " + s.z.toFixed(1) + " mm";
    svg.dataset.slice = String(sliceIndex);
  }

  function showCase(i) {
    caseIndex = i;
    const c = data.cases[i];
    select.value = String(i);
    svg.setAttribute("viewBox", "0 0 " + c.width_mm + " " + c.height_mm);
    image.setAttribute("width", String(c.width_mm));
    image.setAttribute("height", String(c.height_mm));
    slider.max = String(c.slices.length - 1);
    sliceIndex = Math.min(Math.max(c.initial, 0), c.slices.length - 1);
    svg.dataset.caseId = c.id;
    renderMetrics(c);
    renderSlice();
  }

  function step(delta) {
    const n = data.cases[caseIndex].slices.length;
    const next = Math.min(Math.max(sliceIndex + delta, 0), n - 1);
    if (next !== sliceIndex) {
      sliceIndex = next;
      renderSlice();
    }
  }

  select.addEventListener("change", function () { showCase(Number(select.value)); });
  slider.addEventListener("input", function () {
    sliceIndex = Number(slider.value);
    renderSlice();
  });
  document.addEventListener("keydown", function (event) {
    // The slider and the case picker handle their own keys.
    if (event.target === slider || event.target === select) { return; }
    const keys = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 5, PageDown: -5 };
    if (event.key in keys) {
      step(keys[event.key]);
      event.preventDefault();
    } else if (event.key === "Home") {
      step(-1e9);
      event.preventDefault();
    } else if (event.key === "End") {
      step(1e9);
      event.preventDefault();
    }
  });
  document.querySelectorAll("#source-toggles input").forEach(function (box) {
    box.addEventListener("change", function () {
      if (box.checked) { hiddenSources.delete(box.dataset.source); } else { hiddenSources.add(box.dataset.source); }
      applyVisibility();
    });
  });
  document.querySelectorAll("#structure-toggles input").forEach(function (box) {
    box.addEventListener("change", function () {
      if (box.checked) { hiddenStructures.delete(box.dataset.structure); } else { hiddenStructures.add(box.dataset.structure); }
      applyVisibility();
    });
  });
  showCase(0);
}());
