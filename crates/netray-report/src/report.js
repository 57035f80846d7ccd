// netray report: clicking a hop or a root cause shows its details in the side panel.
(function () {
  'use strict';
  var panel = document.getElementById('panel');
  if (!panel) { document.body.dataset.ready = 'true'; return; }
  function clearSel() {
    document.querySelectorAll('.sel').forEach(function (e) { e.classList.remove('sel'); });
  }
  function appendCause(idx) {
    var card = document.getElementById('cause-' + idx);
    if (!card) { return; }
    var h = document.createElement('h3');
    h.className = 'panel-h';
    h.textContent = 'Root cause';
    panel.appendChild(h);
    var copy = card.cloneNode(true);
    copy.removeAttribute('id');
    copy.classList.add('in-panel');
    panel.appendChild(copy);
    card.classList.add('sel');
  }
  var loaded = false;
  function remember(hash) {
    if (loaded && window.location.hash !== hash) {
      try { window.history.replaceState(null, '', hash); } catch (e) { /* file:// in some browsers */ }
    }
  }
  function selectHop(el) {
    clearSel();
    el.classList.add('sel');
    panel.replaceChildren();
    var tpl = document.getElementById('hd-' + el.dataset.hop);
    if (tpl) { panel.appendChild(tpl.content.cloneNode(true)); }
    if (el.dataset.causeIdx !== undefined) { appendCause(el.dataset.causeIdx); }
    panel.dataset.selected = 'hop-' + el.dataset.hop;
    panel.scrollTop = 0;
    remember('#hop-' + el.dataset.hop);
  }
  function selectCause(card) {
    clearSel();
    panel.replaceChildren();
    var idx = card.dataset.causeIdx;
    appendCause(idx);
    document.querySelectorAll('.hop.fail[data-cause-idx="' + idx + '"]').forEach(function (h) {
      h.classList.add('sel');
      var lane = h.closest('details');
      if (lane) { lane.open = true; }
    });
    panel.dataset.selected = 'cause-' + idx;
    panel.scrollTop = 0;
    remember('#cause-' + idx);
  }
  document.addEventListener('click', function (ev) {
    var hop = ev.target.closest('[data-hop]');
    if (hop) { selectHop(hop); return; }
    var head = ev.target.closest('.cause > header');
    if (head && !head.closest('#panel')) { selectCause(head.parentElement); }
  });
  document.addEventListener('keydown', function (ev) {
    if (ev.key !== 'Enter' && ev.key !== ' ') { return; }
    var head = ev.target.closest && ev.target.closest('.cause > header');
    if (head && !head.closest('#panel')) { ev.preventDefault(); selectCause(head.parentElement); }
  });
  // `#hop-L-H` and `#cause-N` select that hop or cause (links can be shared); otherwise open
  // on the first place a packet was lost.
  function fromHash() {
    var m = /^#(hop|cause)-([0-9]+(?:-[0-9]+)?)$/.exec(window.location.hash);
    if (!m) { return false; }
    if (m[1] === 'cause') {
      var card = document.getElementById('cause-' + m[2]);
      if (!card) { return false; }
      selectCause(card);
    } else {
      var hop = document.querySelector('[data-hop="' + m[2] + '"]');
      if (!hop) { return false; }
      var lane = hop.closest('details');
      if (lane) { lane.open = true; }
      selectHop(hop);
      hop.scrollIntoView({block: 'center'});
    }
    return true;
  }
  window.addEventListener('hashchange', fromHash);
  if (!fromHash()) {
    var first = document.querySelector('.lane.fail .hop.fail');
    if (first) { selectHop(first); }
  }
  loaded = true;
  document.body.dataset.ready = 'true';
}());
