// The demo storefront: pick a real customer, see their profile and the widget's slots,
// click items and watch the answers change as the events flow through the pipeline.
(function () {
  "use strict";

  var state = {user: null, item: null, title: null, clock: null, widget: null};
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function getJson(path) {
    return fetch(path, {headers: {"Accept": "application/json"}}).then(function (res) {
      if (!res.ok) throw new Error(path + ": HTTP " + res.status);
      return res.json();
    });
  }

  function loadCustomers() {
    return getJson("/v1/demo/customers?limit=15").then(function (body) {
      state.clock = body.clock;
      $("clock").textContent = body.clock || "no events yet";
      var select = $("customer");
      select.replaceChildren();
      body.customers.forEach(function (c) {
        select.appendChild(el("option", {value: c.user_id},
          c.user_id + " — " + c.orders + " orders, £" + c.monetary.toFixed(0)));
      });
      if (!body.customers.length) {
        select.appendChild(el("option", {value: ""}, "no customers yet: run `aisle demo`"));
      }
      return body.customers;
    });
  }

  function row(dl, term, value) {
    dl.appendChild(el("dt", {}, term));
    dl.appendChild(el("dd", {}, value === null || value === undefined ? "—" : value));
  }

  function renderProfile(p) {
    var box = $("profile");
    box.replaceChildren();
    var dl = el("dl", {id: "profile-facts"});
    row(dl, "Customer", p.user_id);
    row(dl, "Segment", p.segment);
    row(dl, "Why", p.segment_reason);
    row(dl, "Lifecycle", p.lifecycle);
    row(dl, "RFM", p.rfm ? p.rfm.code + " (" + p.rfm.frequency + " orders, £" +
        p.rfm.monetary.toFixed(2) + ")" : null);
    row(dl, "Churn risk", p.churn_risk === null ? null : Math.round(p.churn_risk * 100) + "%");
    row(dl, "Tier", (p.tier.tier || "—") + (p.tier.next_tier ? ", £" +
        (p.tier.gap || 0).toFixed(2) + " to " + p.tier.next_tier : ""));
    row(dl, "Likes", p.top_categories.join(", ") || null);
    box.appendChild(dl);
    box.appendChild(el("h3", {}, "Recent purchases"));
    var ul = el("ul", {id: "purchases"});
    p.recent_purchases.slice(0, 6).forEach(function (x) {
      var li = el("li");
      var button = el("button", {type: "button", "class": "linkish", "data-item-id": x.item_id},
                      x.title || x.item_id);
      button.addEventListener("click", function () { openItem(x.item_id, x.title); });
      li.appendChild(button);
      li.appendChild(document.createTextNode(" ×" + x.quantity + ", " + x.at.slice(0, 10)));
      ul.appendChild(li);
    });
    if (!p.recent_purchases.length) ul.appendChild(el("li", {}, "none"));
    box.appendChild(ul);
  }

  function loadProfile() {
    return getJson("/v1/users/" + encodeURIComponent(state.user) + "/profile")
      .then(function (p) {
        renderProfile(p);
        return p;
      }, function (err) {
        $("profile").replaceChildren(el("p", {"class": "bad"}, String(err.message)));
      });
  }

  function mountWidget() {
    if (state.widget) state.widget.destroy();
    $("product-title").textContent = state.title || state.item || "—";
    state.widget = window.Aisle.mount($("widget"), {
      user: state.user, item: state.item, clock: state.clock, limit: 6, timeout: 3000,
      session: "demo-" + state.user});
  }

  function openItem(itemId, title) {
    state.item = itemId;
    state.title = title || itemId;
    mountWidget();
  }

  function logEvent(event) {
    var li = el("li", {}, event.type + " " + event.payload.item_id +
                (event.payload.request_id ? " (from answer " +
                 event.payload.request_id.slice(0, 8) + "…)" : ""));
    $("events").prepend(li);
  }

  function pickCustomer(userId) {
    if (!userId) return;
    state.user = userId;
    history.replaceState(null, "", "?user=" + encodeURIComponent(userId));
    loadProfile().then(function (p) {
      var first = p && p.recent_purchases[0];
      state.item = first ? first.item_id : null;
      state.title = first ? first.title : null;
      mountWidget();
    });
  }

  $("widget").addEventListener("aisle:select", function (ev) {
    ev.preventDefault();  // stay on this page: open the item here instead of navigating
    openItemAfterSend(ev.detail);
  });

  function openItemAfterSend(detail) {
    detail.sent.then(function (event) {
      if (event) logEvent(event);
      openItem(detail.item_id, detail.title);
      // The view is on its way through Kafka and the worker: look again once it landed.
      setTimeout(function () { if (state.widget) state.widget.refresh(); loadProfile(); }, 1500);
    });
  }

  $("pick").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var typed = $("custom-id").value.trim();
    pickCustomer(typed || $("customer").value);
  });

  loadCustomers().then(function (customers) {
    var wanted = new URLSearchParams(location.search).get("user");
    if (wanted) $("custom-id").value = wanted;
    pickCustomer(wanted || (customers[0] && customers[0].user_id));
  }, function (err) {
    $("profile").replaceChildren(el("p", {"class": "bad"}, String(err.message)));
  });
})();
