/*! funnelstream.js | Apache-2.0 | docs: ingest/static/README.md */
/*
 * The storefront snippet: the readable source of ingest/static/funnelstream.js
 * (rebuilt by ingest/static/build.sh; keep it plain ES5, no dependencies).
 *
 * How it works, top to bottom:
 *   track() builds one small event and appends it to the queue in localStorage
 *   (memory when storage is blocked, in memory mode, or before consent).
 *   schedule() arms one timer: now when a batch is full, after flushInterval otherwise.
 *   flush() leases a batch (so other tabs and later pages skip it), sends it as a
 *   text/plain JSON body (no CORS preflight) and done() settles it:
 *     2xx           -> remove (the server dropped any invalid ones itself)
 *     400/401/413.. -> remove, never retried
 *     429/503       -> keep, wait for Retry-After (persisted across pages)
 *     0/408/5xx     -> keep, exponential backoff with jitter; the `online` event retries
 *   On page hide the queue goes out with fetch keepalive; on pagehide with sendBeacon.
 *   An unload send is never acknowledged, so its events stay queued under a short
 *   lease and the next page sends them again: the server dedupes on event_id.
 * Every entry point is wrapped: nothing here may throw into the host page.
 */
(function (window, document) {
  'use strict';
  try {
    var NAME = 'funnelstream';
    var stub = window[NAME];
    if (stub && stub.loaded) return; // included twice: the first copy stays in charge

    var navigator = window.navigator;
    var location = window.location;
    var history = window.history;
    var script = document.currentScript;

    var PREFIX = 'fs_';
    var IDLE_MS = 30 * 60 * 1000; // a session ends after 30 min without events
    var MAX_SESSION_MS = 24 * 3600 * 1000; // or after 24 h, as the server's sessionizer
    var MAX_BODY = 60000; // keepalive fetches and beacons may carry 64 KiB in flight
    var MAX_BATCH = 100;
    var FETCH_LEASE = 30000; // a send not answered by then is retried
    var UNLOAD_LEASE = 10000; // the next page re-sends an unload batch after this
    var UNLOAD_TRUST = 3600000; // an unload batch older than this counts as delivered
    var PAGE_PARAMS = 'utm_source utm_medium utm_campaign utm_term utm_content gclid fbclid msclkid'.split(' ');
    var ID_KEYS = { vid: 1, sess: 1 }; // the keys a cookie may hold

    var DEFAULTS = {
      host: '',
      storage: 'both', // 'both' | 'cookie' | 'localStorage' (cookieless) | 'memory'
      cookieDomain: '',
      autoPageviews: true,
      hashRouting: false,
      batchSize: 10,
      flushInterval: 1000,
      queueMaxEvents: 1000,
      queueMaxAgeHours: 168,
      consent: false, // true: nothing is stored or sent before optIn()
      respectDNT: false,
      allowAutomation: false
    };

    var cfg = null;
    var enabled = false; // false under Do Not Track (when respected) or automation
    var consented = false;
    var mem = {}; // what storage could not (or may not yet) keep
    var busy = false; // a regular send is in flight
    var attempts = 0; // failed sends in a row, for the backoff
    var backoffUntil = 0;
    var timer = 0;
    var timerAt = 0;
    var lastPage = ''; // path (+ search, + hash) of the last page view
    var lastUrl = ''; // the referrer of the next SPA page view
    var leaving = false; // pagehide came: a failing fetch was likely cut by the unload

    var now = Date.now;

    var safe = function (fn) {
      return function () {
        try {
          return fn.apply(this, arguments);
        } catch (e) {
          // swallowed: the host page must never see our errors
        }
      };
    };

    var uuid = function () {
      var c = window.crypto;
      if (c && c.randomUUID) return c.randomUUID();
      var b = [];
      var s = '';
      for (var i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0;
      if (c && c.getRandomValues) b = c.getRandomValues(new Uint8Array(16));
      b[6] = (b[6] & 15) | 64;
      b[8] = (b[8] & 63) | 128;
      for (i = 0; i < 16; i++) s += (i == 4 || i == 6 || i == 8 || i == 10 ? '-' : '') + (b[i] + 256).toString(16).slice(1);
      return s;
    };

    // ---- storage: localStorage and/or a cookie, falling back to memory ----

    var persists = function (key) {
      return cfg.storage != 'memory' && (key == 'opt' || consented || !cfg.consent);
    };
    var inLocal = function (key) {
      return persists(key) && !(cfg.storage == 'cookie' && ID_KEYS[key]);
    };
    var inCookie = function (key) {
      return persists(key) && ID_KEYS[key] && (cfg.storage == 'cookie' || cfg.storage == 'both');
    };
    var readCookie = function (key) {
      var m = document.cookie.match(new RegExp('(?:^|; )' + PREFIX + key + '=([^;]*)'));
      return m ? decodeURIComponent(m[1]) : null;
    };

    var get = function (key) {
      var v = null;
      if (inLocal(key)) {
        try {
          v = localStorage.getItem(PREFIX + key);
        } catch (e) {}
      }
      if (v == null && inCookie(key)) {
        try {
          v = readCookie(key);
        } catch (e) {}
      }
      return v != null ? v : key in mem ? mem[key] : null;
    };

    var set = function (key, v) {
      var saved = false;
      mem[key] = v;
      if (inLocal(key)) {
        try {
          if (v == null) localStorage.removeItem(PREFIX + key);
          else localStorage.setItem(PREFIX + key, v);
          saved = true;
        } catch (e) {
          try {
            localStorage.removeItem(PREFIX + key); // leave no stale copy behind
          } catch (e2) {}
        }
      }
      if (inCookie(key)) {
        try {
          document.cookie =
            PREFIX + key + '=' + encodeURIComponent(v || '') + ';path=/;max-age=' + (v == null ? 0 : 31536000) +
            ';SameSite=Lax' + (cfg.cookieDomain ? ';domain=' + cfg.cookieDomain : '') +
            (location.protocol == 'https:' ? ';Secure' : '');
          saved = saved || readCookie(key) == v;
        } catch (e) {}
      }
      if (saved) delete mem[key];
    };

    // The queue: [{e: event, l: leased until, b: sent at unload}], oldest first.
    var readQueue = function () {
      try {
        return JSON.parse(get('q')) || [];
      } catch (e) {
        return [];
      }
    };
    var writeQueue = function (q) {
      var t = now();
      var oldest = t - cfg.queueMaxAgeHours * 3600000;
      q = q.filter(function (x) {
        return x.e.timestamp > oldest && !(x.b && x.b < t - UNLOAD_TRUST);
      }).slice(-cfg.queueMaxEvents);
      set('q', q.length ? JSON.stringify(q) : null);
    };

    // ---- sending ----

    var canTrack = function () {
      return enabled && get('opt') != 'out';
    };
    var canSend = function () {
      return canTrack() && (consented || !cfg.consent);
    };
    var retryAt = function () {
      return +get('ra') || 0; // a server's Retry-After, kept across pages
    };

    var schedule = function (delay) {
      if (!canSend()) return;
      var q = readQueue();
      var t = now();
      var at = Infinity;
      for (var i = 0; i < q.length; i++) at = Math.min(at, Math.max(q[i].l || 0, t + delay));
      if (at == Infinity) return;
      at = Math.max(at, retryAt(), backoffUntil);
      if (timer && timerAt <= at) return;
      clearTimeout(timer);
      timerAt = at;
      timer = setTimeout(
        safe(function () {
          timer = 0;
          flush(0);
        }),
        at - t
      );
    };

    // mode 0: a regular send, one at a time; 1: the page is hidden (fetch keepalive);
    // 2: the page is going away (sendBeacon). 1 and 2 send everything, and only while
    // the last send went well: otherwise the queue simply waits for the next page.
    var flush = function (mode) {
      var t = now();
      if (!canSend() || navigator.onLine === false) return; // `online` will call again
      if (mode ? attempts || retryAt() > t : busy) return;
      if (!mode && Math.max(retryAt(), backoffUntil) > t) return schedule(0); // woke early
      var q = readQueue();
      var batch = [];
      var size = 0;
      for (var i = 0; i < q.length && batch.length < MAX_BATCH; i++) {
        var x = q[i];
        if (x.l > t) continue;
        var n = JSON.stringify(x.e).length;
        if (size + n > MAX_BODY && batch.length) break;
        batch.push(x.e);
        size += n;
        x.l = t + (mode ? UNLOAD_LEASE : FETCH_LEASE);
        if (mode) x.b = t;
      }
      if (!batch.length) return schedule(0); // all leased: look again when a lease ends
      var body = JSON.stringify({ batch: batch, write_key: cfg.writeKey, sent_at: t });
      var url = cfg.host + '/v1/events';
      if (mode == 2 && navigator.sendBeacon) {
        if (!navigator.sendBeacon(url, body)) return; // a string goes as text/plain
        writeQueue(q);
        return flush(2);
      }
      writeQueue(q);
      var abort = window.AbortController ? new AbortController() : null;
      if (abort) setTimeout(function () { abort.abort(); }, FETCH_LEASE);
      var sending = window.fetch(url, {
        method: 'POST',
        body: body,
        keepalive: size < MAX_BODY,
        credentials: 'omit',
        headers: { 'Content-Type': 'text/plain' },
        signal: abort ? abort.signal : null
      });
      if (!mode) busy = true;
      sending.then(
        safe(function (r) {
          done(batch, mode, r.status, r.headers.get('Retry-After'));
        }),
        safe(function () {
          done(batch, mode, 0);
        })
      );
      if (mode) flush(mode);
    };

    var done = function (batch, mode, status, retryAfter) {
      if (!mode) busy = false;
      var t = now();
      var retry = !status || status == 408 || status == 429 || status > 499;
      if (!status && leaving) return; // keep the lease: the next page decides
      var ids = {};
      for (var i = 0; i < batch.length; i++) ids[batch[i].event_id] = 1;
      writeQueue(
        readQueue().filter(function (x) {
          if (!ids[x.e.event_id]) return true;
          x.l = x.b = 0;
          return retry;
        })
      );
      if (retry) {
        var wait = retryAfter ? (+retryAfter >= 0 ? retryAfter * 1000 : Date.parse(retryAfter) - t) : 0;
        if (wait > 0 && (status == 429 || status == 503)) set('ra', '' + (t + Math.min(wait, 86400000)));
        else backoffUntil = t + Math.min(60000, 1000 * Math.pow(2, attempts)) * (0.5 + Math.random() / 2);
        attempts++;
      } else {
        attempts = 0;
      }
      schedule(0);
    };

    // ---- events ----

    var visitor = function () {
      var v = get('vid');
      if (!v) set('vid', (v = uuid()));
      return v;
    };

    var session = function (t) {
      var s;
      try {
        s = JSON.parse(get('sess'));
      } catch (e) {}
      if (!s || !(t - s.l <= IDLE_MS) || !(t - s.s <= MAX_SESSION_MS)) s = { i: uuid(), s: t, n: 0 };
      s.n++; // the in-session event index: a gap means a lost event
      s.l = t;
      set('sess', JSON.stringify(s));
      return s;
    };

    var track = function (name, properties) {
      if (!name || !canTrack()) return;
      var props = { path: location.pathname };
      for (var k in properties) props[k] = properties[k];
      JSON.stringify(props); // throws here (caught) on cycles, before any state changes
      var t = now();
      var s = session(t);
      props.event_index = s.n;
      var ev = {
        event: '' + name,
        event_id: uuid(),
        visitor_id: visitor(),
        session_id: s.i,
        timestamp: t,
        properties: props
      };
      var user = get('uid');
      if (user) ev.user_id = user;
      var q = readQueue();
      q.push({ e: ev });
      writeQueue(q);
      var ready = 0;
      for (var i = 0; i < q.length; i++) if (!(q[i].l > t)) ready++;
      schedule(ready >= cfg.batchSize ? 0 : cfg.flushInterval);
    };

    var pageKey = function () {
      return location.pathname + location.search + (cfg.hashRouting ? location.hash : '');
    };

    var page = function (properties) {
      var p = { url: location.href, title: document.title };
      var ref = lastUrl || document.referrer;
      if (ref) p.referrer = ref;
      try {
        var params = new URLSearchParams(location.search);
        for (var i = 0; i < PAGE_PARAMS.length; i++) {
          var v = params.get(PAGE_PARAMS[i]);
          if (v) p[PAGE_PARAMS[i]] = v;
        }
      } catch (e) {}
      for (var k in properties) p[k] = properties[k];
      lastUrl = location.href;
      lastPage = pageKey();
      track('page_view', p);
    };

    var onNavigate = safe(function () {
      if (pageKey() != lastPage) page();
    });

    var identify = function (userId, traits) {
      if (userId == null || !canTrack()) return;
      set('uid', '' + userId);
      track('identify', traits);
    };

    var reset = function () {
      if (!canTrack()) return;
      set('uid', null);
      set('sess', null);
      set('vid', uuid());
    };

    var optOut = function () {
      if (!cfg) return;
      var keys = ['q', 'vid', 'sess', 'uid', 'ra'];
      for (var i = 0; i < keys.length; i++) set(keys[i], null); // while storage may still be cleared
      consented = false;
      mem = {};
      clearTimeout(timer);
      timer = 0;
      set('opt', 'out');
    };

    var optIn = function () {
      if (!cfg) return;
      var wasOut = get('opt') == 'out';
      var held = mem; // what was kept in memory before consent
      mem = {};
      consented = true;
      set('opt', 'in');
      for (var k in held) if (k != 'q' && k != 'opt' && held[k] != null) set(k, held[k]);
      var q = held.q ? JSON.parse(held.q) : [];
      if (q.length) writeQueue(readQueue().concat(q));
      if (wasOut && enabled && cfg.autoPageviews) page();
      schedule(0);
    };

    var init = function (options) {
      if (cfg || !options || !options.writeKey) return;
      var o = {};
      var k;
      for (k in DEFAULTS) o[k] = DEFAULTS[k];
      for (k in options) o[k] = options[k];
      o.host = ('' + (o.host || (script && script.src ? new URL(script.src).origin : location.origin))).replace(/\/+$/, '');
      cfg = o;
      var dnt = navigator.doNotTrack == '1' || window.doNotTrack == '1' || navigator.globalPrivacyControl;
      enabled = !(navigator.webdriver && !o.allowAutomation) && !(o.respectDNT && dnt);
      if (!enabled) return;
      consented = get('opt') == 'in';
      if (canTrack() && (consented || !o.consent)) set('vid', visitor()); // both stores agree

      window.addEventListener(
        'pagehide',
        safe(function () {
          leaving = true;
          flush(2);
        })
      );
      document.addEventListener(
        'visibilitychange',
        safe(function () {
          if (document.visibilityState == 'hidden') flush(1);
        })
      );
      window.addEventListener(
        'online',
        safe(function () {
          attempts = backoffUntil = 0;
          schedule(0);
        })
      );
      window.addEventListener(
        'pageshow',
        safe(function (e) {
          leaving = false;
          if (e.persisted) schedule(0); // back from the bfcache: timers may have been lost
        })
      );
      schedule(0); // what earlier pages left in the queue

      if (o.autoPageviews) {
        var patch = function (method) {
          var original = history[method];
          if (!original) return;
          history[method] = function () {
            var result = original.apply(this, arguments);
            onNavigate();
            return result;
          };
        };
        patch('pushState');
        patch('replaceState');
        window.addEventListener('popstate', onNavigate);
        if (o.hashRouting) window.addEventListener('hashchange', onNavigate);
        page();
      }
    };

    // ---- the public object, and the calls the loader stub queued ----

    var api = {
      init: init,
      track: track,
      page: page,
      identify: identify,
      reset: reset,
      optOut: optOut,
      optIn: optIn,
      flush: function () {
        if (cfg) flush(0);
      }
    };
    var main = safe(function (method) {
      if (api.hasOwnProperty(method)) return api[method].apply(null, [].slice.call(arguments, 1));
    });
    for (var m in api) main[m] = safe(api[m]);
    main.loaded = true;
    window[NAME] = main;

    var queued = [].slice.call((stub && stub.q) || []);
    var replay = function (inits) {
      for (var i = 0; i < queued.length; i++) if ((queued[i][0] == 'init') == inits) main.apply(null, queued[i]);
    };
    replay(true);
    if (!cfg && script && script.getAttribute('data-write-key')) {
      init({ writeKey: script.getAttribute('data-write-key'), host: script.getAttribute('data-host') });
    }
    replay(false);
  } catch (e) {
    // never into the host page
  }
})(window, document);
