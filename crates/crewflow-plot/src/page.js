(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("flow-data").textContent);
  var svg = document.getElementById("graph");
  var vp = document.getElementById("vp");
  var nodes = vp.querySelectorAll("g.node");
  var edges = vp.querySelectorAll("g.edge");
  var info = document.getElementById("info");
  var out = D.nodes.map(function () { return []; });
  var inc = D.nodes.map(function () { return []; });
  D.edges.forEach(function (e, i) { out[e[0]].push(i); inc[e[1]].push(i); });

  // Everything reachable from node i along adj (edges' end `end`): a step's paths.
  function reach(i, adj, end, ns, es) {
    var stack = [i];
    ns[i] = true;
    while (stack.length) {
      var u = stack.pop();
      adj[u].forEach(function (ei) {
        es[ei] = true;
        var v = D.edges[ei][end];
        if (!ns[v]) { ns[v] = true; stack.push(v); }
      });
    }
  }
  function clear() {
    svg.classList.remove("dim");
    vp.querySelectorAll(".hl").forEach(function (x) { x.classList.remove("hl"); });
  }
  function highlight(i) {
    clear();
    var ns = {}, es = {};
    reach(i, out, 1, ns, es);
    reach(i, inc, 0, ns, es);
    svg.classList.add("dim");
    Object.keys(ns).forEach(function (n) { nodes[n].classList.add("hl"); });
    Object.keys(es).forEach(function (e) { edges[e].classList.add("hl"); });
  }
  function line(label, text) {
    var p = document.createElement("p");
    var b = document.createElement("b");
    b.textContent = label + " ";
    p.appendChild(b);
    p.appendChild(document.createTextNode(text));
    info.appendChild(p);
  }
  function show(i) {
    var n = D.nodes[i];
    info.textContent = "";
    var h = document.createElement("h2");
    h.textContent = n.name;
    info.appendChild(h);
    line("kind:", n.kind + (n.start ? " (also a start)" : ""));
    line("runs when:", n.trigger || (n.kind === "label" ? "a route label no router declares" : "the flow starts"));
    var from = inc[i].map(function (ei) { var e = D.edges[ei]; return D.nodes[e[0]].name + (e[2] ? " [" + e[2] + "]" : ""); });
    if (from.length) line("triggered by:", from.join(", "));
    var to = out[i].map(function (ei) { var e = D.edges[ei]; return D.nodes[e[1]].name + (e[2] ? " [" + e[2] + "]" : ""); });
    if (to.length) line("triggers:", to.join(", "));
    if (n.routes.length) line("routes:", n.routes.join(", "));
    if (n.source) line("defined at:", n.source);
    if (D.run) line("completed:", String(n.count) + (n.count === 1 ? " time" : " times"));
    info.hidden = false;
  }
  nodes.forEach(function (g, i) {
    g.addEventListener("mouseenter", function () { highlight(i); });
    g.addEventListener("mouseleave", clear);
    g.addEventListener("click", function (ev) { ev.stopPropagation(); show(i); });
  });

  // Pan (drag the background) and zoom (wheel, about the pointer); double-click fits.
  var t = { x: 0, y: 0, k: 1 };
  function apply() { vp.setAttribute("transform", "translate(" + t.x + "," + t.y + ") scale(" + t.k + ")"); }
  function fit() {
    var r = svg.getBoundingClientRect();
    t.k = Math.min(1, r.width / D.width, r.height / D.height) || 1;
    t.x = (r.width - D.width * t.k) / 2;
    t.y = (r.height - D.height * t.k) / 2;
    apply();
  }
  var drag = null;
  svg.addEventListener("pointerdown", function (ev) {
    if (ev.target.closest && ev.target.closest("g.node")) return;
    drag = { x: ev.clientX - t.x, y: ev.clientY - t.y };
    svg.setPointerCapture(ev.pointerId);
    info.hidden = true;
  });
  svg.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    t.x = ev.clientX - drag.x;
    t.y = ev.clientY - drag.y;
    apply();
  });
  svg.addEventListener("pointerup", function () { drag = null; });
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = svg.getBoundingClientRect();
    var mx = ev.clientX - r.left, my = ev.clientY - r.top;
    var k = Math.min(8, Math.max(0.05, t.k * Math.exp(-ev.deltaY * 0.0015)));
    t.x = mx - (mx - t.x) * k / t.k;
    t.y = my - (my - t.y) * k / t.k;
    t.k = k;
    apply();
  }, { passive: false });
  svg.addEventListener("dblclick", fit);
  window.addEventListener("resize", fit);
  fit();
})();
