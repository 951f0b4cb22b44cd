/* GPU use per user, Slurm job and namespace: fetches api/v1/users and draws one table.
 *
 * It keeps to itself: its own setTimeout chain (re-armed only at the end of a tick, so timers
 * never stack), at the service's round interval like the cluster view, with If-None-Match so
 * an unchanged document costs a 304; it stops while the page's Pause button is pressed. Names
 * come from the nodes and are untrusted: the DOM is built with createElement and textContent
 * only. Clicking a user opens their own view (static/user.js); clicking a job or namespace puts
 * it into the page's user filter (#filter-user) and dispatches an input event, so the cluster
 * view filters with its own logic.
 */
'use strict';

(function () {
  const TICK_MS = 500;
  const TABS = [
    { list: 'users', field: 'user', title: 'Users', filter: (name) => name },
    { list: 'slurm_jobs', field: 'slurm_job', title: 'Slurm jobs', filter: (name) => name },
    // app.js matches a pod as "namespace/pod": the trailing slash keeps to this namespace.
    { list: 'namespaces', field: 'namespace', title: 'Namespaces', filter: (name) => name + '/' },
  ];

  const root = document.getElementById('usage');
  if (!root) return;
  const pause = document.getElementById('pause');
  const filter = document.getElementById('filter-user');

  const state = { data: null, etag: null, tab: 0, nextFetchAt: 0, inFlight: false, failures: 0 };

  const { el, isNumber, fetchIfChanged, nextFetchAt } = window.gpuPage; // static/dom.js

  function mib(value) {
    return isNumber(value) && value > 0 ? window.gpuPage.mib(value) : '–';
  }

  function hours(value) {
    if (!isNumber(value)) return '–';
    return value >= 100 ? value.toFixed(0) : value.toFixed(1);
  }

  function sorted(rows, field) {
    const longest = (row) => (row.gpu_hours && isNumber(row.gpu_hours['30d']) ? row.gpu_hours['30d'] : 0);
    return rows.slice().sort((a, b) => (b.gpus - a.gpus) || (longest(b) - longest(a)) ||
      String(a[field]).localeCompare(String(b[field])));
  }

  function pick(tab, name) {
    // a user opens their own view (static/user.js), which filters the nodes to them too
    if (tab.list === 'users' && window.gpuUserView) {
      window.gpuUserView.open(name);
      return;
    }
    if (!filter) return;
    filter.value = tab.filter(name);
    filter.dispatchEvent(new Event('input', { bubbles: true }));
  }

  function tabBar() {
    const bar = el('div', 'usage-tabs');
    bar.setAttribute('role', 'group');
    bar.setAttribute('aria-label', 'Group by');
    TABS.forEach((tab, index) => {
      const button = el('button', 'usage-tab', tab.title);
      button.type = 'button';
      button.dataset.list = tab.list;
      button.setAttribute('aria-pressed', String(index === state.tab));
      button.addEventListener('click', () => {
        state.tab = index;
        draw();
      });
      bar.append(button);
    });
    return bar;
  }

  function table(tab, rows, windows) {
    const tableEl = el('table', 'usage-table');
    const head = el('tr');
    const titles = [tab.title.replace(/s$/, ''), 'GPUs', 'Charged', 'Memory', 'Idle-held'];
    for (const span of windows) titles.push('GPU-h ' + span);
    for (const title of titles) head.append(el('th', null, title));
    tableEl.append(el('thead'));
    tableEl.tHead.append(head);
    const body = el('tbody');
    for (const row of sorted(rows, tab.field)) {
      const name = String(row[tab.field] ?? '');
      const tr = el('tr', 'usage-row');
      const cell = el('td', 'usage-name');
      if (name) {
        const button = el('button', 'usage-pick', name);
        button.type = 'button';
        button.title = tab.list === 'users' ? 'Show this user\'s view' : 'Show only these GPUs';
        button.addEventListener('click', () => pick(tab, name));
        cell.append(button);
      } else {
        cell.append(el('span', 'usage-unknown', '(unknown)'));
      }
      // a GPU shared with other groups is charged in part: see the README's "What the words mean"
      const charged = el('td', 'usage-charged', String(Math.round((row.gpu_share || 0) * 100) / 100));
      tr.append(cell, el('td', 'usage-gpus', row.gpus), charged,
        el('td', 'usage-memory', mib(row.memory_mib)));
      const idle = el('td', 'usage-idle', row.idle_held_gpus || '–');
      if (row.idle_held_gpus) idle.classList.add('has-idle');
      tr.append(idle);
      for (const span of windows) {
        tr.append(el('td', 'usage-hours', hours(row.gpu_hours ? row.gpu_hours[span] : null)));
      }
      body.append(tr);
    }
    tableEl.append(body);
    return tableEl;
  }

  function draw() {
    const data = state.data;
    const parts = [el('h2', 'usage-title', 'GPU use'), tabBar()];
    if (data) {
      const tab = TABS[state.tab];
      const rows = Array.isArray(data[tab.list]) ? data[tab.list] : [];
      const info = data.gpu_hours || {};
      const windows = info.configured && Array.isArray(info.windows) ? info.windows : [];
      if (info.configured && info.error) parts.push(el('p', 'usage-error', 'GPU-hours: ' + info.error));
      parts.push(rows.length ? table(tab, rows, windows) : el('p', 'usage-empty', 'No GPU use to show.'));
    }
    root.replaceChildren(...parts);
  }

  async function load() {
    state.inFlight = true;
    try {
      const changed = await fetchIfChanged('api/v1/users', state.etag);
      if (changed) {
        state.data = changed.data;
        state.etag = changed.etag;
        draw();
      }
      state.failures = 0;
    } catch (error) {
      state.failures += 1;
    } finally {
      state.nextFetchAt = nextFetchAt(state.data, state.failures);
      state.inFlight = false;
    }
  }

  function paused() {
    return Boolean(pause) && pause.getAttribute('aria-pressed') === 'true';
  }

  function tick() {
    if (!paused() && !state.inFlight && Date.now() >= state.nextFetchAt) load();
    window.setTimeout(tick, TICK_MS);
  }

  draw();
  tick();
})();
