/* vecbudget report: interactive Pareto plots (inline SVG from harness/interactive_plot.py).
   Hovering (or focusing) a point shows its configuration; a point is a link to its row on the
   method page; the legend buttons show or hide a method in every plot of the page. No library. */
(function () {
  "use strict";

  function each(list, fn) { Array.prototype.forEach.call(list, fn); }

  function line(label, value) {
    var div = document.createElement("div");
    var b = document.createElement("b");
    b.textContent = label + " ";
    div.appendChild(b);
    div.appendChild(document.createTextNode(value));
    return div;
  }

  function showTip(wrap, svg, pt) {
    var tip = wrap.querySelector(".plot-tip");
    var d;
    try { d = JSON.parse(pt.getAttribute("data-tip")); } catch (e) { return; }
    tip.textContent = "";
    var head = document.createElement("div");
    head.className = "tip-method";
    head.textContent = d.method;
    tip.appendChild(head);
    if (d.build) { tip.appendChild(line("build", d.build)); }
    if (d.search) { tip.appendChild(line("search", d.search)); }
    tip.appendChild(line(svg.getAttribute("data-ylabel"), d.quality));
    tip.appendChild(line("bytes/vector", d.bytes));
    tip.appendChild(line("QPS (1 thread)", d.qps));
    tip.appendChild(line("config", d.hash));
    tip.hidden = false;
    var box = wrap.getBoundingClientRect();
    var p = pt.getBoundingClientRect();
    var x = p.left + p.width / 2 - box.left + 12;
    var y = p.top + p.height / 2 - box.top + 12;
    if (x + tip.offsetWidth > wrap.clientWidth) { x = Math.max(0, x - tip.offsetWidth - 24); }
    if (y + tip.offsetHeight > wrap.clientHeight) { y = Math.max(0, y - tip.offsetHeight - 24); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
    pt.classList.add("hover");
  }

  function hideTip(wrap, pt) {
    wrap.querySelector(".plot-tip").hidden = true;
    if (pt) { pt.classList.remove("hover"); }
  }

  each(document.querySelectorAll(".plot-wrap"), function (wrap) {
    var svg = wrap.querySelector("svg.pareto");
    if (!svg) { return; }
    each(svg.querySelectorAll(".pt"), function (pt) {
      var link = pt.parentNode;
      pt.addEventListener("mouseenter", function () { showTip(wrap, svg, pt); });
      pt.addEventListener("mouseleave", function () { hideTip(wrap, pt); });
      link.addEventListener("focus", function () { showTip(wrap, svg, pt); });
      link.addEventListener("blur", function () { hideTip(wrap, pt); });
    });
  });

  // legend: a method hidden in one plot is hidden in all plots of the page
  function setShown(method, shown) {
    each(document.querySelectorAll("svg.pareto .series"), function (g) {
      if (g.getAttribute("data-method") === method) { g.classList.toggle("off", !shown); }
    });
    each(document.querySelectorAll(".legend-item"), function (b) {
      if (b.getAttribute("data-method") === method) { b.setAttribute("aria-pressed", shown ? "true" : "false"); }
    });
  }
  each(document.querySelectorAll(".legend-item"), function (button) {
    button.addEventListener("click", function () {
      setShown(button.getAttribute("data-method"), button.getAttribute("aria-pressed") !== "true");
    });
  });
  each(document.querySelectorAll(".legend-all"), function (button) {
    button.addEventListener("click", function () {
      var shown = button.getAttribute("data-show") === "1";
      var seen = {};
      each(document.querySelectorAll(".legend-item"), function (b) {
        var m = b.getAttribute("data-method");
        if (!seen[m]) { seen[m] = true; setShown(m, shown); }
      });
    });
  });
}());
