// survey6 web UI: live refresh of the probe list and of a probe's page, copy buttons, confirmations.
// Whatever comes from the server goes into the page as text (textContent), never as markup.
(function () {
  "use strict";

  function fetchJson(url, loginUrl) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(
      function (response) {
        if (response.status === 401) {
          window.location.assign(loginUrl); // the login expired: log in again
          throw new Error("logged out");
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      }
    );
  }

  function stamp(iso) {
    return iso ? iso.slice(0, 19).replace("T", " ") + "Z" : "-";
  }

  function cell(text, className, field) {
    var td = document.createElement("td");
    if (className) td.className = className;
    if (field) td.dataset.field = field;
    td.textContent = text;
    return td;
  }

  function badge(kind, value, field) {
    var span = document.createElement("span");
    span.className = "badge " + kind + "-" + String(value).replace(/ /g, "-");
    if (field) span.dataset.field = field;
    span.textContent = value;
    return span;
  }

  function wrap(node) {
    var td = document.createElement("td");
    td.appendChild(node);
    return td;
  }

  // Polls every data-refresh-ms while the tab is visible; a failed round shows and retries.
  function poll(intervalMs, work) {
    function round() {
      var next = function () { window.setTimeout(round, intervalMs); };
      if (document.hidden) {
        next();
        return;
      }
      work().then(next, next);
    }
    window.setTimeout(round, intervalMs);
  }

  // -- the probe list ------------------------------------------------------------------------
  function probeRow(p, detailUrl) {
    var tr = document.createElement("tr");
    tr.dataset.probeId = p.probe_id;
    var link = document.createElement("a");
    link.href = detailUrl.replace("__ID__", encodeURIComponent(p.probe_id));
    link.textContent = p.probe_id;
    tr.appendChild(wrap(link));
    tr.appendChild(cell(p.hostname, "hostname"));
    tr.appendChild(wrap(badge("state", p.state, "state")));
    tr.appendChild(wrap(badge("health", p.capture_health, "capture_health")));
    tr.appendChild(cell(p.display.last_heartbeat, "", "last_heartbeat"));
    tr.appendChild(cell(p.display.packets_captured, "num", "packets_captured"));
    tr.appendChild(cell(p.display.packets_per_s, "num", "packets_per_s"));
    tr.appendChild(cell(p.display.drop_ratio, "num", "drop_ratio"));
    tr.appendChild(cell(p.display.backlog, "", "backlog"));
    tr.appendChild(cell(p.display.last_upload, "", "last_upload"));
    tr.appendChild(cell(p.display.labels, "labels", "labels"));
    return tr;
  }

  function setUpList(table) {
    var form = document.getElementById("probe-filter");
    var updated = document.getElementById("updated");
    var intervalMs = Number(updated.dataset.refreshMs) || 3000;

    function query() {
      var params = new URLSearchParams(new FormData(form));
      ["q", "state"].forEach(function (name) {
        if (!params.get(name)) params.delete(name);
      });
      return params;
    }

    function refresh() {
      return fetchJson(table.dataset.api + "?" + query().toString(), table.dataset.loginUrl).then(
        function (data) {
          var rows = data.probes.map(function (p) { return probeRow(p, table.dataset.detailUrl); });
          if (!rows.length) {
            var empty = document.createElement("tr");
            empty.className = "empty";
            var td = cell("No probe matches.");
            td.colSpan = 11;
            empty.appendChild(td);
            rows = [empty];
          }
          table.tBodies[0].replaceChildren.apply(table.tBodies[0], rows);
          Object.keys(data.counts).forEach(function (state) {
            var counter = document.querySelector('[data-count="' + state + '"]');
            if (counter) counter.textContent = data.counts[state];
          });
          updated.textContent = "updated " + stamp(data.generated_at);
          updated.classList.remove("failed");
          table.dataset.refreshed = data.generated_at;
        },
        function (error) {
          updated.textContent = "refresh failed (" + error.message + "); retrying";
          updated.classList.add("failed");
        }
      );
    }

    // Filtering takes effect as one types; the address and the sort links keep the filter.
    var timer = null;
    function filterChanged() {
      window.clearTimeout(timer);
      timer = window.setTimeout(function () {
        var params = query();
        window.history.replaceState(null, "", "?" + params.toString());
        table.querySelectorAll("thead a").forEach(function (a) {
          var url = new URL(a.href);
          ["q", "state"].forEach(function (name) {
            if (params.get(name)) url.searchParams.set(name, params.get(name));
            else url.searchParams.delete(name);
          });
          a.href = url.toString();
        });
        refresh();
      }, 250);
    }
    form.addEventListener("input", filterChanged);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      filterChanged();
    });
    poll(intervalMs, refresh);
  }

  // -- a probe's page ------------------------------------------------------------------------
  function commandRow(c) {
    var tr = document.createElement("tr");
    tr.dataset.commandId = c.id;
    tr.appendChild(cell(stamp(c.issued_at)));
    tr.appendChild(cell(c.action));
    tr.appendChild(wrap(badge("outcome", c.outcome, "outcome")));
    tr.appendChild(cell(stamp(c.delivered_at)));
    tr.appendChild(cell(stamp(c.acked_at)));
    tr.appendChild(cell(c.detail));
    return tr;
  }

  function setUpDetail(section) {
    var intervalMs = Number(section.dataset.refreshMs) || 3000;
    function refresh() {
      return fetchJson(section.dataset.api, section.dataset.loginUrl).then(function (data) {
        var p = data.probe;
        section.querySelectorAll("[data-field]").forEach(function (node) {
          var field = node.dataset.field;
          if (field === "state" || field === "capture_health") {
            node.className = "badge " + (field === "state" ? "state-" : "health-") + p[field].replace(/ /g, "-");
            node.textContent = p[field];
          } else if (field === "capture_error") {
            node.textContent = p.capture_error;
          } else if (field in p.display) {
            node.textContent = p.display[field] || "-";
          }
        });
        var body = section.querySelector("#commands tbody");
        if (data.commands.length) {
          body.replaceChildren.apply(body, data.commands.map(commandRow));
        }
        section.dataset.refreshed = data.generated_at;
      });
    }
    poll(intervalMs, refresh);
  }

  // -- small things --------------------------------------------------------------------------
  function setUpCopy(button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.dataset.copy);
      var text = source.textContent;
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
      } else {
        selectText(source); // plain HTTP on another host: the clipboard API is not offered
      }
    });
  }

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var list = document.getElementById("probe-list");
    if (list) setUpList(list);
    var detail = document.getElementById("probe-detail");
    if (detail) setUpDetail(detail);
    document.querySelectorAll("button[data-copy]").forEach(setUpCopy);
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  });
})();
