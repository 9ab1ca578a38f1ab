/* vecbudget report: sortable tables and the leaderboard filters (inline, no dependencies). */
(function () {
  "use strict";

  function key(cell) {
    if (!cell) { return { missing: true }; }
    var v = cell.getAttribute("data-v");
    if (v !== null) {
      if (v === "") { return { missing: true }; }
      var num = Number(v);
      if (!isNaN(num)) { return { num: num }; }
    }
    var s = cell.getAttribute("data-s");  // explicit text sort key (e.g. a method name without its ★)
    var text = (s !== null ? s : cell.textContent).trim().toLowerCase();
    return text === "" || text === "\u2013" ? { missing: true } : { text: text };
  }

  function compare(a, b) {
    if ("num" in a && "num" in b) { return a.num - b.num; }
    if ("num" in a) { return -1; }
    if ("num" in b) { return 1; }
    return a.text < b.text ? -1 : (a.text > b.text ? 1 : 0);
  }

  function sortBy(table, col, th) {
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return { row: row, key: key(row.cells[col]), i: i };
    });
    rows.sort(function (x, y) {
      if (x.key.missing || y.key.missing) {  // missing values always last
        if (x.key.missing && y.key.missing) { return x.i - y.i; }
        return x.key.missing ? 1 : -1;
      }
      var r = compare(x.key, y.key);
      if (dir === "descending") { r = -r; }
      return r !== 0 ? r : x.i - y.i;
    });
    rows.forEach(function (x) { body.appendChild(x.row); });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead) { return; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(table, col, th); }
      });
    });
  });

  var board = document.getElementById("leaderboard");
  var budget = document.getElementById("budget-filter");
  var topOnly = document.getElementById("top-only");
  function filter() {
    if (!board) { return; }
    var want = budget ? budget.value : "";
    var top = topOnly ? topOnly.checked : false;
    Array.prototype.forEach.call(board.tBodies[0].rows, function (row) {
      var show = (want === "" || row.getAttribute("data-budget") === want) &&
                 (!top || Number(row.getAttribute("data-pos")) <= 3);
      row.classList.toggle("hidden", !show);
    });
  }
  if (budget) { budget.addEventListener("change", filter); }
  if (topOnly) { topOnly.addEventListener("change", filter); }

  // optional columns: a check box per column (harness/report.py marks them with data-col)
  function setColumn(table, key, shown) {
    var index = -1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (th.getAttribute("data-col") === key) { index = i; th.classList.toggle("col-hidden", !shown); }
    });
    if (index < 0) { return; }
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      if (row.cells[index]) { row.cells[index].classList.toggle("col-hidden", !shown); }
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("input.col-toggle"), function (box) {
    var table = document.getElementById(box.getAttribute("data-table"));
    if (!table || !table.tHead) { return; }
    setColumn(table, box.getAttribute("data-col"), box.checked);
    box.addEventListener("change", function () { setColumn(table, box.getAttribute("data-col"), box.checked); });
  });

  // a link to a configuration (#cfg-<hash>) highlights its row
  if (location.hash && location.hash.indexOf("#cfg-") === 0) {
    var target = document.getElementById(location.hash.slice(1));
    if (target) { target.classList.add("best"); }
  }
}());
