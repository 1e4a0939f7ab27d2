/* quicmig HTML report: draws the timelines from the JSON embedded in the page.
   No library and no request: plain SVG, drawn again on zoom and resize. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var LEFT = 70, RIGHT = 14, TOP = 20, GAP = 26, AXIS = 34, STRIP = 18;

  function node(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (attrs.hasOwnProperty(k)) e.setAttribute(k, attrs[k]); }
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, str, cls, anchor) {
    var t = node("text", { x: x, y: y, "class": cls || "", "text-anchor": anchor || "start" }, parent);
    t.textContent = str;
    return t;
  }
  function ticks(lo, hi, count) {
    var span = hi - lo;
    if (!(span > 0)) return [lo];
    var raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw))), n = raw / mag;
    var step = (n < 1.5 ? 1 : n < 3.5 ? 2 : n < 7.5 ? 5 : 10) * mag, out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Number(v.toPrecision(12)));
    }
    return out;
  }
  function fmt(v) {
    var a = Math.abs(v);
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1).replace(/\.0$/, "");
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
    if (a === 0) return "0";
    return v.toPrecision(2).replace(/\.?0+$/, "");
  }
  function lastAtOrBefore(ts, t) {
    var lo = 0, hi = ts.length - 1, found = -1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (ts[mid] <= t) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return found;
  }

  function Chart(box, data) {
    this.box = box;
    this.data = data;
    this.full = [Number(box.getAttribute("data-from")), Number(box.getAttribute("data-to"))];
    this.view = this.full.slice();
    this.panelHeight = Number(box.getAttribute("data-panel-height") || 120);
    this.labelAll = box.getAttribute("data-label-marks") === "all";
    this.tip = document.createElement("div");
    this.tip.className = "tip";
    box.appendChild(this.tip);
    this.draw();
    var self = this;
    box.addEventListener("dblclick", function () { self.zoom(self.full[0], self.full[1]); });
    window.addEventListener("mouseup", function (ev) { if (self.onUp) self.onUp(ev); });
  }

  Chart.prototype.zoom = function (from, to) {
    if (!(to > from)) return;
    this.view = [from, to];
    this.draw();
  };

  Chart.prototype.x = function (t) {
    var v = this.view;
    return LEFT + (t - v[0]) / (v[1] - v[0]) * (this.width - LEFT - RIGHT);
  };
  Chart.prototype.t = function (px) {
    var v = this.view;
    return v[0] + (px - LEFT) / (this.width - LEFT - RIGHT) * (v[1] - v[0]);
  };

  Chart.prototype.draw = function () {
    var data = this.data, self = this, view = this.view;
    var width = Math.max(480, this.box.clientWidth || 900);
    this.width = width;
    var panels = data.panels, ph = this.panelHeight, plotW = width - LEFT - RIGHT;
    // Labels of the marks in view, in rows so that none overlaps another.
    var placed = [];
    data.marks.forEach(function (m) {
      if (m.at < view[0] || m.at > view[1]) return;
      if (!(self.labelAll || m.kind === "change")) return;
      var x = self.x(m.at), w = 6.2 * m.label.length + 8, row = 0;
      while (placed.some(function (l) { return l.row === row && x < l.x + l.w && l.x < x + w; })) row++;
      placed.push({ x: x, w: w, row: row, m: m });
    });
    var rows = placed.reduce(function (n, l) { return Math.max(n, l.row + 1); }, 0);
    var stripY = 6 + rows * 13, top = stripY + STRIP + TOP;
    this.top = top;
    var height = top + Math.max(0, panels.length * (ph + GAP) - GAP) + AXIS;
    var old = this.box.querySelector("svg");
    if (old) old.remove();
    var svg = node("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height,
      role: "img" });
    node("title", {}, svg).textContent = "timeline from " + fmt(view[0]) + " s to " + fmt(view[1]) + " s";
    this.box.insertBefore(svg, this.tip);
    var clipId = "clip-" + Math.random().toString(36).slice(2);
    var clip = node("clipPath", { id: clipId }, node("defs", {}, svg));
    node("rect", { x: LEFT, y: 0, width: plotW, height: height - AXIS }, clip);
    // Which client address the server was sending to: a strip above the panels.
    var strip = node("g", { "class": "strip", "clip-path": "url(#" + clipId + ")" }, svg);
    data.paths.forEach(function (p) {
      var a = Math.max(self.x(p.from), LEFT), b = Math.min(self.x(p.to), width - RIGHT);
      if (b <= a) return;
      node("rect", { x: a, y: stripY, width: b - a, height: STRIP - 2, "class": "ps" + (p.index % 4) }, strip);
      if (b - a > 60) {
        var label = text(strip, a + 4, stripY + STRIP - 6, p.label, "pathlabel");
        label.setAttribute("data-path", String(p.index));
      }
    });
    text(svg, LEFT - 6, stripY + STRIP - 6, "path", "pathlabel", "end");
    panels.forEach(function (panel, i) {
      var y0 = top + i * (ph + GAP), y1 = y0 + ph;
      var g = node("g", { "class": "panel", "data-key": panel.key }, svg);
      var shade = node("g", { "clip-path": "url(#" + clipId + ")" }, g);
      data.paths.forEach(function (p) {
        var a = Math.max(self.x(p.from), LEFT), b = Math.min(self.x(p.to), width - RIGHT);
        if (b > a) node("rect", { x: a, y: y0, width: b - a, height: ph, "class": "p" + (p.index % 4) }, shade);
      });
      data.bands.forEach(function (band) {
        var a = self.x(band.from), b = self.x(band.to);
        node("rect", { x: a, y: y0, width: Math.max(b - a, 2), height: ph, "class": "band" }, shade);
      });
      var ts = panel.data[0], vs = panel.data[1], scale = panel.scale;
      var lo = lastAtOrBefore(ts, view[0]), peak = 0, low = Infinity;
      for (var k = Math.max(lo, 0); k < ts.length && ts[k] <= view[1]; k++) {
        peak = Math.max(peak, vs[k] * scale);
        low = Math.min(low, vs[k] * scale);
      }
      if (lo >= 0) { peak = Math.max(peak, vs[lo] * scale); low = Math.min(low, vs[lo] * scale); }
      // A growing total (bytes delivered) is drawn from its lowest value in view, so that a
      // stall stays visible when zoomed in; the others from zero.
      var floor = panel.floating && low < peak ? low : 0;
      peak = peak > floor ? peak + (peak - floor) * 0.08 : floor + 1;
      var yOf = function (v) { return y1 - (v * scale - floor) / (peak - floor) * ph; };
      var axis = node("g", { "class": "axis" }, g);
      node("line", { x1: LEFT, y1: y1, x2: width - RIGHT, y2: y1 }, axis);
      node("line", { x1: LEFT, y1: y0, x2: LEFT, y2: y1 }, axis);
      ticks(floor, peak, ph > 90 ? 4 : 2).forEach(function (v) {
        var y = y1 - (v - floor) / (peak - floor) * ph;
        node("line", { x1: LEFT - 4, y1: y, x2: LEFT, y2: y }, axis);
        text(axis, LEFT - 6, y + 4, fmt(v), "", "end");
      });
      text(g, LEFT + 2, y0 - 6, panel.label + " (" + panel.unit + ")", "plabel");
      var d = "", started = false;
      for (var j = Math.max(lo, 0); j < ts.length; j++) {
        var px = self.x(ts[j]), py = yOf(vs[j]);
        if (!started) { d += "M" + px.toFixed(1) + "," + py.toFixed(1); started = true; }
        else if (panel.step) { d += "H" + px.toFixed(1) + "V" + py.toFixed(1); }
        else { d += "L" + px.toFixed(1) + "," + py.toFixed(1); }
        if (ts[j] > view[1]) break;
      }
      if (started && panel.step && ts[ts.length - 1] < view[1]) {
        d += "H" + self.x(Math.min(view[1], data.x1)).toFixed(1);
      }
      if (d) {
        node("path", { d: d, "class": "series line-" + panel.key, "clip-path": "url(#" + clipId + ")" }, g);
      }
    });
    var marks = node("g", { "class": "marks" }, svg);
    data.marks.forEach(function (m) {
      if (m.at < view[0] || m.at > view[1]) return;
      var x = self.x(m.at);
      node("line", { x1: x, y1: stripY, x2: x, y2: height - AXIS, "class": "mk-" + m.kind }, marks);
    });
    placed.forEach(function (l) {
      var label = text(marks, l.x + 3, 6 + l.row * 13 + 9, l.m.label, "mklabel mk-text-" + l.m.kind);
      label.setAttribute("data-at", String(l.m.at));
    });
    var xaxis = node("g", { "class": "axis" }, svg);
    var base = height - AXIS;
    ticks(view[0], view[1], Math.max(3, Math.floor(plotW / 90))).forEach(function (t) {
      var x = self.x(t);
      if (x < LEFT - 0.5 || x > width - RIGHT + 0.5) return;
      node("line", { x1: x, y1: base, x2: x, y2: base + 4 }, xaxis);
      text(xaxis, x, base + 16, fmt(t), "", "middle");
    });
    text(xaxis, LEFT + plotW / 2, base + 30,
      "seconds since the start of the run (" + data.clock + " time)", "", "middle");
    this.svg = svg;
    this.interact(svg, height);
    this.box.setAttribute("data-rendered", "1");
    this.box.setAttribute("data-view", view[0] + " " + view[1]);
  };

  Chart.prototype.interact = function (svg, height) {
    var self = this, start = null, sel = null, cursor = null;
    function localX(ev) {
      var r = svg.getBoundingClientRect();
      return (ev.clientX - r.left) * (self.width / r.width);
    }
    svg.addEventListener("mousedown", function (ev) {
      start = localX(ev);
      sel = node("rect", { x: start, y: 0, width: 0, height: height - AXIS, "class": "sel" }, svg);
      ev.preventDefault();
    });
    svg.addEventListener("mousemove", function (ev) {
      var x = localX(ev);
      if (start !== null && sel) {
        sel.setAttribute("x", Math.min(start, x));
        sel.setAttribute("width", Math.abs(x - start));
        return;
      }
      if (x < LEFT || x > self.width - RIGHT) { self.tip.style.display = "none"; return; }
      var t = self.t(x), lines = ["t = " + t.toFixed(4) + " s"];
      self.data.panels.forEach(function (panel) {
        var i = lastAtOrBefore(panel.data[0], t);
        if (i >= 0) lines.push(panel.key + ": " + fmt(panel.data[1][i] * panel.scale) + " " + panel.unit);
      });
      self.data.paths.forEach(function (p) {
        if (p.from <= t && t < p.to) lines.push("server sends to " + p.label);
      });
      if (!cursor) cursor = node("line", { "class": "cursor" }, svg);
      cursor.setAttribute("x1", x); cursor.setAttribute("x2", x);
      cursor.setAttribute("y1", 0); cursor.setAttribute("y2", height - AXIS);
      self.tip.textContent = lines.join("\n");
      self.tip.style.display = "block";
      var r = svg.getBoundingClientRect(), px = ev.clientX - r.left;
      self.tip.style.left = (px + 14 + 260 > r.width ? px - 270 : px + 14) + "px";
      self.tip.style.top = "4px";
    });
    svg.addEventListener("mouseleave", function () {
      self.tip.style.display = "none";
      if (cursor) { cursor.remove(); cursor = null; }
    });
    self.onUp = function (ev) {
      if (start === null) return;
      var x = localX(ev), a = Math.min(start, x), b = Math.max(start, x);
      start = null;
      if (sel) { sel.remove(); sel = null; }
      if (b - a > 6) self.zoom(self.t(a), self.t(b));
    };
  };

  var charts = {};
  function dataOf(id) {
    var holder = document.getElementById(id);
    return holder ? JSON.parse(holder.textContent) : null;
  }
  document.querySelectorAll("div.chart[data-chart]").forEach(function (box) {
    var data = dataOf(box.getAttribute("data-chart"));
    if (data) charts[box.id] = new Chart(box, data);
  });
  document.querySelectorAll("button[data-zoom]").forEach(function (button) {
    button.addEventListener("click", function () {
      var chart = charts[button.getAttribute("data-zoom")];
      if (chart) chart.zoom(Number(button.getAttribute("data-from")), Number(button.getAttribute("data-to")));
    });
  });
  document.querySelectorAll("button[data-expand]").forEach(function (button) {
    button.addEventListener("click", function () {
      var open = button.getAttribute("data-open") !== "1";
      document.querySelectorAll("#" + button.getAttribute("data-expand") + " details").forEach(
        function (d) { d.open = open; });
      button.setAttribute("data-open", open ? "1" : "0");
      button.textContent = open ? "fold the runs" : "expand every run";
    });
  });
  document.querySelectorAll("button[data-seqzoom]").forEach(function (button) {
    button.addEventListener("click", function () {
      var wrap = document.getElementById(button.getAttribute("data-seqzoom"));
      var now = Number(wrap.getAttribute("data-zoom") || 1);
      var next = Math.min(2, Math.max(0.6, now + Number(button.getAttribute("data-step"))));
      wrap.setAttribute("data-zoom", String(next));
      wrap.style.setProperty("--zoom", String(next));
    });
  });
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      Object.keys(charts).forEach(function (k) { charts[k].draw(); });
    }, 150);
  });
  document.documentElement.setAttribute("data-charts", String(Object.keys(charts).length));
})();
