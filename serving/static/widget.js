/*
 * Aisle widget: personalised slots for any shop page, from one script tag.
 *
 *   <div data-aisle-slot="related"></div>        (optional: where each slot goes;
 *   <div data-aisle-slot="recommended"></div>     without them the slots are placed
 *   <div data-aisle-slot="offer"></div>           right after the script tag)
 *   <script src="https://api.example/widget.js" data-aisle-user="12680"
 *           data-aisle-item="85123A" async></script>
 *
 * Attributes: data-aisle-user (the page passes it: no cookies), data-aisle-item (the
 * product on the page), data-aisle-api (default: where the script came from),
 * data-aisle-limit (items per slot, default 6), data-aisle-timeout (ms before a slot
 * gives up and collapses, default 1500), data-aisle-href (product link template, default
 * "?item={item_id}"), data-aisle-session (a session id; default: one per tab),
 * data-aisle-clock (RFC 3339 "now" for events, when the shop replays old data).
 *
 * One request per slot; a slot that fails, times out or has nothing collapses quietly.
 * Slots reserve their height while loading, so the page does not jump when items land;
 * give the slot elements the same min-height in the page's own CSS
 * ([data-aisle-slot]{min-height:17rem} [data-aisle-slot=offer]{min-height:18rem}) to
 * hold the space before the script has loaded too.
 * A click on an item sends product.viewed with the request_id of the answer it came from
 * (attribution), fires a cancelable "aisle:select" DOM event, then follows the link.
 * window.Aisle.mount(element, options) does the same from code (the demo page uses it).
 */
(function () {
  "use strict";

  var VERSION = "1";
  var TITLES = {related: "Related products", recommended: "Recommended for you",
                offer: "Your offer"};
  var CSS = [
    ".aisle-slot{box-sizing:border-box;min-height:var(--aisle-slot-height,17rem);",
    "margin:1rem 0;font:inherit;contain:layout}",
    ".aisle-offer{min-height:var(--aisle-offer-height,18rem);border:2px solid #b3261e;",
    "border-radius:8px;padding:.75rem 1rem}",
    ".aisle-slot[hidden]{display:none}",
    ".aisle-h{font-size:1.1rem;margin:0 0 .5rem}",
    ".aisle-list{list-style:none;margin:0;padding:0;display:grid;gap:.75rem;",
    "grid-template-columns:repeat(auto-fill,minmax(9rem,1fr))}",
    ".aisle-card{height:13.5rem;overflow:hidden}",
    ".aisle-offer .aisle-card{height:auto}",
    ".aisle-link{display:flex;flex-direction:column;gap:.2rem;height:100%;color:inherit;",
    "text-decoration:none;border-radius:6px;padding:.25rem}",
    ".aisle-link:hover .aisle-title{text-decoration:underline}",
    ".aisle-link:focus-visible{outline:3px solid #1a73e8;outline-offset:2px}",
    ".aisle-img{width:100%;height:6rem;object-fit:cover;border-radius:4px;background:#eee}",
    ".aisle-title{font-weight:600;font-size:.9rem;line-height:1.2;max-height:2.4em;",
    "overflow:hidden}",
    ".aisle-price{font-size:.9rem}",
    ".aisle-reason{font-size:.75rem;color:#555;line-height:1.2;max-height:3.6em;",
    "overflow:hidden}",
    ".aisle-skeleton{background:linear-gradient(90deg,#eee,#f6f6f6,#eee);border-radius:6px}",
    ".aisle-deal{font-size:1.4rem;font-weight:700;color:#b3261e;margin:0}",
    ".aisle-why{margin:.2rem 0;font-size:.95rem;color:inherit;max-height:none}",
    ".aisle-countdown{font-variant-numeric:tabular-nums;margin:.2rem 0 .6rem}"
  ].join("");

  var counter = 0;

  function injectStyle() {
    if (document.getElementById("aisle-style")) return;
    var style = document.createElement("style");
    style.id = "aisle-style";
    style.textContent = CSS;
    (document.head || document.documentElement).appendChild(style);
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) {
      node.setAttribute(k, attrs[k]);
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function randomId(prefix) {
    var bytes = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return prefix + Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  function sessionId() {
    // Per tab, in sessionStorage (not a cookie); a fresh id when storage is off.
    try {
      var id = window.sessionStorage.getItem("aisle.session");
      if (!id) { id = randomId("s-"); window.sessionStorage.setItem("aisle.session", id); }
      return id;
    } catch (e) { return randomId("s-"); }
  }

  function placeholder(item) {
    // Online Retail has no pictures: a tile coloured by the item id with its initials.
    var h = 0;
    for (var i = 0; i < item.item_id.length; i++) h = (h * 31 + item.item_id.charCodeAt(i)) % 360;
    var words = (item.title || item.item_id).split(/\s+/).filter(Boolean);
    var initials = words.slice(0, 2).map(function (w) { return w[0]; }).join("")
      .replace(/[^A-Za-z0-9]/g, "");
    var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='160' height='96'>" +
      "<rect width='160' height='96' fill='hsl(" + h + ",45%,82%)'/>" +
      "<text x='80' y='60' font-family='sans-serif' font-size='34' text-anchor='middle' " +
      "fill='hsl(" + h + ",45%,30%)'>" + initials + "</text></svg>";
    return "data:image/svg+xml," + encodeURIComponent(svg);
  }

  function money(value, currency) {
    if (value === undefined || value === null) return "";
    try {
      return new Intl.NumberFormat(undefined, {style: "currency", currency: currency || "GBP"})
        .format(value);
    } catch (e) { return value.toFixed(2); }
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    var m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return (d ? d + "d " : "") + pad(h) + ":" + pad(m) + ":" + pad(s);
  }

  function Widget(root, options) {
    this.root = root;
    this.opts = options;
    this.timers = [];
    this.session = options.session || sessionId();
    this.loadedAt = Date.now();
    var self = this;
    this.onClick = function (ev) { self.click(ev); };
    root.addEventListener("click", this.onClick);
  }

  Widget.prototype.url = function (path) {
    return this.opts.api.replace(/\/$/, "") + path;
  };

  Widget.prototype.fetchJson = function (path) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () { ctrl.abort(); }, this.opts.timeout);
    return fetch(this.url(path), {signal: ctrl.signal, credentials: "omit", mode: "cors",
                                  headers: {"Accept": "application/json"}})
      .then(function (res) {
        if (!res.ok) throw new Error("HTTP " + res.status);
        return res.json();
      })
      .finally(function () { clearTimeout(timer); });
  };

  Widget.prototype.slots = function () {
    var found = this.root.querySelectorAll("[data-aisle-slot]");
    if (found.length) return Array.prototype.slice.call(found);
    var made = [];
    if (this.opts.item) made.push("related");
    if (this.opts.user) made.push("offer", "recommended");
    var root = this.root;
    return made.map(function (kind) {
      var node = el("div", {"data-aisle-slot": kind});
      root.appendChild(node);
      return node;
    });
  };

  Widget.prototype.refresh = function () {
    var self = this;
    this.timers.forEach(clearInterval);
    this.timers = [];
    var nodes = this.slots();
    // With a related slot on the page, "recommended for you" leaves out what it shows:
    // the two answers are asked for at once, and the recommended one asks for spares.
    this.related = null;
    this.pairWithRelated = nodes.some(function (n) {
      return n.getAttribute("data-aisle-slot") === "related";
    }) && !!this.opts.item;
    var related = new Promise(function (resolve) { self.related = resolve; });
    if (!this.pairWithRelated) this.related([]);
    this.relatedShown = related;
    return Promise.all(nodes.map(function (node) { return self.load(node); }));
  };

  Widget.prototype.request = function (kind) {
    var o = this.opts, enc = encodeURIComponent, q = "?limit=" + o.limit;
    if (kind === "related" && o.item) {
      return "/v1/items/" + enc(o.item) + "/related" + q + (o.user ? "&user_id=" + enc(o.user) : "");
    }
    if (kind === "recommended" && o.user) {
      var spare = this.pairWithRelated ? "?limit=" + Math.min(100, 2 * o.limit) : q;
      return "/v1/users/" + enc(o.user) + "/recommendations" + spare +
        (o.item ? "&context_item=" + enc(o.item) : "");
    }
    if (kind === "offer" && o.user) return "/v1/users/" + enc(o.user) + "/offers";
    return null;
  };

  Widget.prototype.load = function (node) {
    var kind = node.getAttribute("data-aisle-slot");
    var path = this.request(kind);
    var section = this.frame(node, kind);
    if (!path) return Promise.resolve(this.collapse(section, "nothing to ask"));
    var self = this;
    var answer = this.fetchJson(path);
    if (kind === "related") {
      answer.then(function (body) {
        self.related((body.items || []).map(function (it) { return it.item_id; }));
      }, function () { self.related([]); });
    } else if (kind === "recommended") {
      answer = Promise.all([answer, this.relatedShown]).then(function (both) {
        var body = both[0], taken = both[1];
        var items = (body.items || []).filter(function (it) {
          return taken.indexOf(it.item_id) < 0;
        }).slice(0, self.opts.limit);
        return Object.assign({}, body, {items: items});
      });
    }
    return answer.then(function (body) {
      var shown = kind === "offer" ? self.renderOffer(section, body) : self.renderItems(section, body);
      if (!shown) self.collapse(section, "empty");
    }, function (err) {
      self.collapse(section, err && err.name === "AbortError" ? "timeout" : "unavailable");
    });
  };

  Widget.prototype.frame = function (node, kind) {
    // A fresh section of reserved height with skeleton cards while the answer is on its way.
    var id = "aisle-h-" + (++counter);
    var section = el("section", {"class": "aisle-slot aisle-" + kind, "aria-labelledby": id,
                                 "aria-busy": "true", "data-state": "loading",
                                 "data-slot": kind});
    section.appendChild(el("h2", {"class": "aisle-h", id: id}, TITLES[kind] || kind));
    if (kind !== "offer") {
      var list = el("ul", {"class": "aisle-list", role: "list"});
      for (var i = 0; i < Math.min(this.opts.limit, 4); i++) {
        list.appendChild(el("li", {"class": "aisle-card aisle-skeleton", "aria-hidden": "true"}));
      }
      section.appendChild(list);
    }
    node.replaceChildren(section);
    node.hidden = false;
    return section;
  };

  function mark(section, state) {
    // Real-user timing: "aisle:related:ready" etc. in the page's performance timeline.
    if (window.performance && performance.mark) {
      performance.mark("aisle:" + section.getAttribute("data-slot") + ":" + state);
    }
  }

  Widget.prototype.collapse = function (section, why) {
    mark(section, "collapsed");
    section.setAttribute("data-state", "collapsed");
    section.setAttribute("data-why", why);
    section.removeAttribute("aria-busy");
    section.replaceChildren();
    section.hidden = true;
    if (section.parentNode) section.parentNode.hidden = true;
  };

  Widget.prototype.card = function (item, slot, requestId) {
    var href = this.opts.href.replace("{item_id}", encodeURIComponent(item.item_id));
    var li = el("li", {"class": "aisle-card"});
    var a = el("a", {"class": "aisle-link", href: href, "data-item-id": item.item_id,
                     "data-request-id": requestId, "data-slot": slot});
    var title = item.title || "Item " + item.item_id;
    a.appendChild(el("img", {"class": "aisle-img", src: placeholder(item), alt: title,
                             width: 160, height: 96, decoding: "async"}));
    a.appendChild(el("span", {"class": "aisle-title"}, title));
    if (item.price !== undefined && item.price !== null) {
      a.appendChild(el("span", {"class": "aisle-price"}, money(item.price)));
    }
    if (item.reason) a.appendChild(el("span", {"class": "aisle-reason"}, item.reason));
    li.appendChild(a);
    return li;
  };

  Widget.prototype.renderItems = function (section, body) {
    var items = body.items || [];
    if (!items.length) return false;
    var slot = section.getAttribute("data-slot");
    var list = el("ul", {"class": "aisle-list", role: "list"});
    for (var i = 0; i < items.length; i++) list.appendChild(this.card(items[i], slot, body.request_id));
    section.replaceChild(list, section.querySelector(".aisle-list"));
    this.ready(section, body.request_id);
    return true;
  };

  Widget.prototype.renderOffer = function (section, body) {
    var offer = (body.offers || [])[0];
    if (!offer || offer.seconds_left <= 0) return false;
    var deal = offer.discount_pct > 0 ? Math.round(offer.discount_pct) + "% off" : "For you";
    section.appendChild(el("p", {"class": "aisle-deal"}, deal));
    section.appendChild(el("p", {"class": "aisle-why aisle-reason"}, offer.reason));
    var countdown = el("p", {"class": "aisle-countdown"}, "Ends in ");
    // The countdown runs on this page's clock from seconds_left (the server's answer on
    // the log's clock), so it is right even when the shop replays old data.
    var time = el("time", {"class": "aisle-clock", datetime: offer.expires_at,
                           "aria-label": "offer ends " + offer.expires_at});
    countdown.appendChild(time);
    section.appendChild(countdown);
    var list = el("ul", {"class": "aisle-list", role: "list"});
    for (var i = 0; i < offer.items.length; i++) {
      list.appendChild(this.card(offer.items[i], "offer", body.request_id));
    }
    section.appendChild(list);
    section.setAttribute("data-offer-id", offer.offer_id);
    var deadline = performance.now() + offer.seconds_left * 1000, self = this, timer = null;
    var tick = function () {
      var left = (deadline - performance.now()) / 1000;
      time.textContent = duration(left);
      if (left <= 0) {
        clearInterval(timer);
        self.collapse(section, "expired");
      }
    };
    tick();
    timer = setInterval(tick, 1000);
    this.timers.push(timer);
    this.ready(section, body.request_id);
    return true;
  };

  Widget.prototype.ready = function (section, requestId) {
    mark(section, "ready");
    section.setAttribute("data-state", "ready");
    section.setAttribute("data-request-id", requestId || "");
    section.removeAttribute("aria-busy");
  };

  Widget.prototype.now = function () {
    if (!this.opts.clock) return new Date();
    return new Date(Date.parse(this.opts.clock) + (Date.now() - this.loadedAt));
  };

  Widget.prototype.sendView = function (itemId, requestId) {
    if (!this.opts.user) return Promise.resolve(null);  // nobody to attribute a view to
    var payload = {item_id: itemId};
    if (requestId) payload.request_id = requestId;
    var event = {type: "product.viewed", event_id: randomId("w-"), user_id: this.opts.user,
                 session_id: this.session, occurred_at: this.now().toISOString(),
                 source: "widget", payload: payload};
    // keepalive: the event still goes out when the click navigates away.
    return fetch(this.url("/v1/events"), {method: "POST", keepalive: true, mode: "cors",
                                         credentials: "omit",
                                         headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify(event)})
      .then(function () { return event; }, function () { return null; });
  };

  Widget.prototype.click = function (ev) {
    var link = ev.target.closest && ev.target.closest("a.aisle-link");
    if (!link || !this.root.contains(link)) return;
    var detail = {item_id: link.getAttribute("data-item-id"),
                  request_id: link.getAttribute("data-request-id"),
                  slot: link.getAttribute("data-slot"),
                  title: (link.querySelector(".aisle-title") || {}).textContent || null};
    detail.sent = this.sendView(detail.item_id, detail.request_id);
    var select = new CustomEvent("aisle:select", {bubbles: true, cancelable: true, detail: detail});
    if (!this.root.dispatchEvent(select)) ev.preventDefault();
  };

  Widget.prototype.destroy = function () {
    this.timers.forEach(clearInterval);
    this.root.removeEventListener("click", this.onClick);
  };

  function options(given, script) {
    var data = function (name) { return script ? script.getAttribute("data-aisle-" + name) : null; };
    var pick = function (name, fallback) {
      return given[name] !== undefined && given[name] !== null ? given[name]
        : data(name) !== null ? data(name) : fallback;
    };
    var origin = script && script.src ? new URL(script.src, location.href).origin : location.origin;
    return {
      api: pick("api", origin), user: pick("user", null), item: pick("item", null),
      limit: parseInt(pick("limit", 6), 10) || 6,
      timeout: parseInt(pick("timeout", 1500), 10) || 1500,
      href: pick("href", "?item={item_id}"), session: pick("session", null),
      clock: pick("clock", null)
    };
  }

  var script = document.currentScript;

  function mount(target, given) {
    injectStyle();
    var widget = new Widget(target, options(given || {}, script));
    widget.refresh();
    return widget;
  }

  function autoMount() {
    if (!script || !(script.hasAttribute("data-aisle-user") || script.hasAttribute("data-aisle-item"))) {
      return;
    }
    var target = document.querySelector("[data-aisle-slot]") ? document.body : null;
    if (!target) {
      target = el("div", {"class": "aisle"});
      script.parentNode.insertBefore(target, script.nextSibling);
    }
    window.Aisle.widget = mount(target, {});
  }

  window.Aisle = {version: VERSION, mount: mount, duration: duration};
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", autoMount);
  } else {
    autoMount();
  }
})();
