// The box's console: the few things a page does by itself. No page runs
// inline script (the Content-Security-Policy forbids it); everything it
// shows is rendered by the box, this file only asks for the new rendering.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  // -- countdowns: the deadline and the arming delay, from the box's numbers --
  let loadedAt = performance.now();

  function tick() {
    const elapsed = (performance.now() - loadedAt) / 1000;
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      const left = Math.max(0, parseFloat(el.dataset.countdown) - elapsed);
      el.textContent = String(Math.ceil(left));
    });
    document.querySelectorAll("[data-arming]").forEach(function (el) {
      if (el.dataset.arming === "console") return;
      const left = Math.max(0, parseFloat(el.dataset.arming) - elapsed);
      const text = el.querySelector("[data-arming-text]");
      if (!text) return;
      const shown = el.dataset.shownText || (el.dataset.shownText = text.textContent.split("A hold")[0]);
      text.textContent = shown + (left > 0
        ? "A hold on the button approves it in " + left.toFixed(1) + " s."
        : "A hold on the button approves it now.");
      el.classList.toggle("armed", left <= 0);
    });
  }

  // -- Now: live, and telling the box what it has shown -----------------------
  const live = document.querySelector('[data-live="now"]');
  let seenPosted = "";

  function markSeen() {
    // Trusted arming: the box lets a press approve a risky request only once
    // this page has shown it, to its last step, in a visible tab.
    const req = live && live.querySelector('[data-needs-console="1"][data-seen="0"][data-position="0"]');
    if (!req || document.visibilityState !== "visible") return;
    const end = req.querySelector("[data-end-of-plan]");
    if (!end) return;
    const key = req.dataset.approval + ":" + req.dataset.digest;
    if (seenPosted === key) return;
    const observer = new IntersectionObserver(function (entries) {
      if (!entries.some(function (e) { return e.isIntersecting; })) return;
      if (document.visibilityState !== "visible" || seenPosted === key) return;
      seenPosted = key;
      observer.disconnect();
      fetch("/v1/approvals/" + encodeURIComponent(req.dataset.approval) + "/seen", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ digest: req.dataset.digest }),
      }).then(refresh, function () { seenPosted = ""; });
    });
    observer.observe(end);
  }

  let refreshing = false;
  let again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch("/now/fragment", { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401 || r.redirected) { window.location.assign("/pair"); return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) {
        live.innerHTML = html;
        loadedAt = performance.now();
        tick();
        markSeen();
      }
    }).finally(function () {
      refreshing = false;
      if (again) { again = false; refresh(); }
    });
  }

  if (live) {
    const events = new EventSource("/v1/events");
    let first = true;
    events.addEventListener("approvals", function () {
      if (first) { first = false; markSeen(); return; }  // the page was rendered with it
      refresh();
    });
    document.addEventListener("visibilitychange", markSeen);
    markSeen();
  }

  // -- signing in: wait for the press ------------------------------------------
  const signIn = document.querySelector('[data-sign-in="waiting"]');
  if (signIn) {
    const poll = function () {
      fetch("/pair/status", { credentials: "same-origin" }).then(function (r) { return r.json(); })
        .then(function (s) {
          if (s.status === "approved") window.location.assign("/");
          else if (s.status === "refused" || s.status === "none") window.location.assign("/pair");
          else setTimeout(poll, 700);
        }, function () { setTimeout(poll, 2000); });
    };
    setTimeout(poll, 700);
  }

  tick();
  setInterval(tick, 250);
})();
