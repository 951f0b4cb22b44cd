/* The cluster page: fetches api/v1/cluster and draws one card per node.
 *
 * Everything shown comes from the nodes and is untrusted (a command line can hold anything), so
 * the DOM is built with createElement and textContent only; no HTML string is ever parsed.
 * One timer drives everything: a setTimeout chain that is re-armed only at the end of a tick,
 * so timers never stack; a fetch already in flight is never started twice. A new document is
 * drawn off-screen and swapped in with one replaceChildren call, so refreshes do not flicker.
 */
'use strict';

(function () {
  const TICK_MS = 500;
  const MIN_REFRESH_S = 1;
  const MAX_BACKOFF_S = 30;
  const FETCH_TIMEOUT_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    updated: $('updated'),
    pause: $('pause'),
    summary: $('summary'),
    nodes: $('nodes'),
    empty: $('empty'),
    banner: $('banner'),
    user: $('filter-user'),
    node: $('filter-node'),
    free: $('filter-free'),
    sort: $('sort'),
    users: $('known-users'),
  };

  const state = {
    data: null,
    etag: null,
    updatedAt: 0, // client clock when the data last changed
    nextFetchAt: 0,
    inFlight: false,
    paused: false,
    failures: 0,
    error: '',
  };

  // ---- small helpers -----------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function isNumber(value) {
    return typeof value === 'number' && Number.isFinite(value);
  }

  function mib(value) {
    if (!isNumber(value)) return '–';
    if (value >= 1024) return (value / 1024).toFixed(value >= 10240 ? 0 : 1) + ' GiB';
    return Math.round(value) + ' MiB';
  }

  function ago(seconds) {
    if (!isNumber(seconds)) return 'never';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function percent(part, whole) {
    if (!isNumber(part) || !isNumber(whole) || whole <= 0) return 0;
    return Math.max(0, Math.min(100, (100 * part) / whole));
  }

  function temperatureClass(celsius) {
    if (!isNumber(celsius)) return 't-unknown';
    if (celsius >= 85) return 't-critical';
    if (celsius >= 75) return 't-hot';
    if (celsius >= 60) return 't-warm';
    return 't-ok';
  }

  function bar(fraction, className, label) {
    const outer = el('div', 'bar ' + className);
    const fill = el('div', 'fill');
    fill.style.width = fraction.toFixed(1) + '%';
    outer.append(fill, el('span', 'bar-label', label));
    return outer;
  }

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

  // ---- filters (kept in the URL hash so a wall screen can be bookmarked) --------------------

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    ui.user.value = params.get('user') || '';
    ui.node.value = params.get('node') || '';
    ui.free.checked = params.get('free') === '1';
    ui.sort.value = params.get('sort') === 'free' ? 'free' : 'name';
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (ui.user.value) params.set('user', ui.user.value);
    if (ui.node.value) params.set('node', ui.node.value);
    if (ui.free.checked) params.set('free', '1');
    if (ui.sort.value !== 'name') params.set('sort', ui.sort.value);
    const hash = params.toString();
    history.replaceState(null, '', hash ? '#' + hash : location.pathname + location.search);
  }

  function filters() {
    return {
      user: ui.user.value.trim().toLowerCase(),
      node: ui.node.value.trim().toLowerCase(),
      free: ui.free.checked,
      sort: ui.sort.value,
    };
  }

  function gpuMatches(gpu, f) {
    if (f.free && !gpu.free) return false;
    if (f.user) {
      // A user name, a Slurm job id or a pod name (namespace/pod) matches.
      return gpu.users.some((u) => [u.username, u.slurm_job, u.pod, u.namespace && u.pod ? u.namespace + '/' + u.pod : '']
        .some((text) => text && String(text).toLowerCase().includes(f.user)));
    }
    return true;
  }

  function nodeMatches(node, f) {
    if (!f.node) return true;
    const haystack = [node.hostname, node.node, node.address]
      .concat(node.ips.map((pair) => pair[1]))
      .join(' ')
      .toLowerCase();
    return haystack.includes(f.node);
  }

  function freeCount(node) {
    return node.gpus.filter((g) => g.free).length;
  }

  // ---- drawing ------------------------------------------------------------------------------

  function summaryItem(label, value, detail, className) {
    const item = el('div', 'stat ' + (className || ''));
    item.append(el('span', 'stat-value', value), el('span', 'stat-label', label));
    if (detail) item.append(el('span', 'stat-detail', detail));
    return item;
  }

  function drawSummary(data) {
    const s = data.summary;
    const nodesDetail = [s.nodes_stale ? s.nodes_stale + ' stale' : '',
      s.nodes_offline ? s.nodes_offline + ' offline' : ''].filter(Boolean).join(', ');
    const items = [
      summaryItem('nodes online', s.nodes_online + ' / ' + s.nodes_total, nodesDetail,
        s.nodes_offline ? 'has-offline' : ''),
      summaryItem('GPUs free', String(s.gpus_free), 'of ' + s.gpus_total, 'is-free'),
      summaryItem('GPUs in use', String(s.gpus_in_use), 'of ' + s.gpus_total),
    ];
    const sick = (s.gpus_sick || 0) + (s.gpus_lost || 0);
    const sickDetail = [s.gpus_lost ? s.gpus_lost + ' lost' : '',
      s.gpus_warning ? s.gpus_warning + ' warning' : ''].filter(Boolean).join(', ');
    items.push(summaryItem('GPUs sick', String(sick), sickDetail, sick ? 'has-sick' : ''));
    const memory = summaryItem('memory used', mib(s.memory_used_mib), 'of ' + mib(s.memory_total_mib));
    memory.append(bar(percent(s.memory_used_mib, s.memory_total_mib), 'mem', ''));
    items.push(memory);
    ui.summary.replaceChildren(...items);
  }

  function userChip(user) {
    const chip = el('span', 'user');
    chip.append(el('span', 'user-name', user.username || '(unknown)'), el('span', 'user-mem', mib(user.mem)));
    if (user.slurm_job) chip.append(el('span', 'user-job', 'job ' + user.slurm_job));
    if (user.pod) {
      const pod = el('span', 'user-pod', (user.namespace ? user.namespace + '/' : '') + user.pod);
      if (user.container) pod.title = 'container ' + user.container;
      chip.append(pod);
    }
    if (isNumber(user.sm_utilization)) {
      chip.append(el('span', 'user-sm', 'SM ' + Math.round(user.sm_utilization * 100) + ' %'));
    }
    chip.title = 'pid ' + user.pid + ': ' + user.command + (user.container ? ' (container ' + user.container + ')' : '');
    return chip;
  }

  const HEALTH_STATES = ['warning', 'sick', 'lost'];

  // A GPU's health: a badge after its index (its reasons in the title) and the reasons under its
  // name; a lost GPU's readings (dashes) give way to one cell saying "lost" and why. Returns the
  // reading cells to show.
  function gpuHealth(gpu, row, id, cells) {
    const health = gpu.health;
    if (!health || !HEALTH_STATES.includes(health.state)) return cells;
    const reasons = Array.isArray(health.reasons) ? health.reasons.map(String) : [];
    row.classList.add('health-' + health.state);
    const badge = el('span', 'health-badge ' + health.state, health.state);
    badge.title = reasons.join('\n');
    id.insertBefore(badge, id.children[1] || null);
    if (health.state === 'lost') {
      const lost = el('td', 'gpu-lost');
      lost.colSpan = cells.length;
      lost.append(el('span', 'lost-mark', 'lost'));
      for (const reason of reasons) lost.append(el('div', 'health-reason', reason));
      return [lost];
    }
    const list = el('div', 'health-reasons');
    for (const reason of reasons) list.append(el('div', 'health-reason', reason));
    id.append(list);
    return cells;
  }

  function gpuRow(gpu) {
    const row = el('tr', 'gpu' + (gpu.free ? ' free' : '') + (gpu.idle_held ? ' idle-held' : ''));
    row.dataset.index = String(gpu.index);

    const id = el('td', 'gpu-id');
    id.append(el('span', 'gpu-index', gpu.index));
    if (gpu.free) id.append(el('span', 'free-mark', 'free'));
    if (gpu.idle_held) {
      const since = isNumber(gpu.idle_held_since) ? new Date(gpu.idle_held_since * 1000) : null;
      const mark = el('span', 'idle-held-mark', 'idle but held');
      mark.title = 'processes hold memory but have not computed' +
        (since ? ' since ' + since.toLocaleString() : '');
      id.append(mark);
      if (since) id.append(el('div', 'idle-held-since', 'since ' + since.toLocaleTimeString()));
    }
    const name = el('div', 'gpu-name', gpu.name);
    name.title = gpu.name;
    id.append(name);

    const memory = el('td', 'gpu-mem');
    memory.append(bar(percent(gpu.use_mem, gpu.tot_mem), 'mem', mib(gpu.use_mem) + ' / ' + mib(gpu.tot_mem)));

    const util = el('td', 'gpu-util');
    util.append(bar(percent(gpu.utilize, 100), 'util', isNumber(gpu.utilize) ? gpu.utilize + ' %' : '–'));

    const temp = el('td', 'gpu-temp ' + temperatureClass(gpu.temp),
      isNumber(gpu.temp) ? gpu.temp + ' °C' : '–');

    const power = el('td', 'gpu-power', isNumber(gpu.power) ? Math.round(gpu.power) + ' W' : '–');
    if (isNumber(gpu.power) && isNumber(gpu.power_limit)) {
      power.append(el('div', 'power-limit', 'of ' + Math.round(gpu.power_limit) + ' W'));
    }

    const users = el('td', 'gpu-users');
    if (gpu.users.length) users.append(...gpu.users.map(userChip));
    else users.append(el('span', 'no-users', 'no processes'));

    row.append(id, ...gpuHealth(gpu, row, id, [memory, util, temp, power]), users);
    return row;
  }

  function gpuTable(gpus) {
    const table = el('table', 'gpus');
    const head = el('tr');
    for (const name of ['GPU', 'Memory', 'Util', 'Temp', 'Power', 'Users']) head.append(el('th', null, name));
    const thead = el('thead');
    thead.append(head);
    const tbody = el('tbody');
    tbody.append(...gpus.map(gpuRow));
    table.append(thead, tbody);
    return table;
  }

  function nodeCard(node, gpus, generatedAt, sinceUpdate) {
    const card = el('article', 'node ' + node.state);
    card.dataset.node = node.node;

    const header = el('header', 'node-head');
    header.append(el('h2', 'node-name', node.hostname), el('span', 'badge ' + node.state, node.state));
    const free = freeCount(node);
    if (free) header.append(el('span', 'free-count', free + ' free'));
    card.append(header);

    const meta = el('div', 'node-meta');
    if (node.address !== node.hostname) meta.append(el('span', 'node-address', node.address));
    for (const pair of node.ips) meta.append(el('span', 'ip', pair[0] + ' ' + pair[1]));
    // Both times are the service's clock, so the age does not depend on this browser's clock.
    const age = isNumber(node.last_seen) ? Math.max(0, generatedAt - node.last_seen) : null;
    const seen = el('span', 'last-seen', 'seen ' + ago(age === null ? null : age + sinceUpdate));
    if (age !== null) seen.dataset.age = String(age);
    meta.append(seen);
    card.append(meta);

    if (node.error) card.append(el('div', 'node-error', node.error));
    if (node.state === 'offline') {
      card.append(el('div', 'node-empty', 'no data from this node'));
    } else if (!node.gpus.length) {
      card.append(el('div', 'node-empty', 'no GPUs reported'));
    } else {
      card.append(gpuTable(gpus));
    }
    return card;
  }

  function draw() {
    const data = state.data;
    if (!data) return;
    drawSummary(data);
    const f = filters();
    const filtering = f.user || f.free;
    const sinceUpdate = (Date.now() - state.updatedAt) / 1000;
    const nodes = data.nodes.filter((n) => nodeMatches(n, f)).slice();
    nodes.sort((a, b) => (f.sort === 'free' ? freeCount(b) - freeCount(a) : 0) ||
      collator.compare(a.hostname, b.hostname) || collator.compare(a.node, b.node));
    const cards = [];
    for (const node of nodes) {
      const gpus = node.gpus.filter((g) => gpuMatches(g, f));
      if (filtering && !gpus.length) continue;
      cards.push(nodeCard(node, gpus, data.generated_at, sinceUpdate));
    }
    ui.nodes.replaceChildren(...cards);
    ui.empty.hidden = cards.length > 0;

    const known = new Set();
    for (const n of data.nodes) for (const g of n.gpus) for (const u of g.users) if (u.username) known.add(u.username);
    const options = Array.from(known).sort(collator.compare).map((name) => {
      const option = document.createElement('option');
      option.value = name;
      return option;
    });
    ui.users.replaceChildren(...options);
  }

  function drawStatus() {
    let text;
    if (!state.data) text = state.error ? 'cannot load: ' + state.error : 'loading…';
    else text = 'updated ' + ago((Date.now() - state.updatedAt) / 1000);
    if (state.paused) text = 'paused · ' + text;
    ui.updated.textContent = text;
    ui.updated.classList.toggle('is-error', Boolean(state.error));
    // The service's own source failing (its query engine) shows the same way.
    const sourceError = state.data && state.data.error ? String(state.data.error) : '';
    ui.banner.hidden = !(state.error && state.data) && !sourceError;
    if (state.error) {
      ui.banner.textContent = 'Cannot reach the status service (' + state.error +
        '); showing the last data.';
    } else {
      ui.banner.textContent = sourceError ? 'Cannot read the cluster (' + sourceError +
        '); showing the last data.' : '';
    }
    // Ages keep counting between refreshes (and while paused) without redrawing the cards.
    const sinceUpdate = (Date.now() - state.updatedAt) / 1000;
    for (const seen of ui.nodes.querySelectorAll('.last-seen[data-age]')) {
      seen.textContent = 'seen ' + ago(Number(seen.dataset.age) + sinceUpdate);
    }
  }

  // ---- fetching -----------------------------------------------------------------------------

  function refreshSeconds() {
    const interval = state.data && isNumber(state.data.interval) ? state.data.interval : 3;
    return Math.max(MIN_REFRESH_S, interval);
  }

  async function load() {
    state.inFlight = true;
    try {
      const headers = state.etag ? { 'If-None-Match': state.etag } : {};
      // A request that never completes must not stop the refreshes (inFlight would stay set).
      const signal = AbortSignal.timeout ? AbortSignal.timeout(FETCH_TIMEOUT_MS) : undefined;
      const response = await fetch('api/v1/cluster', { headers, cache: 'no-store', signal });
      if (response.status === 304) {
        state.error = '';
      } else if (!response.ok) {
        throw new Error('HTTP ' + response.status);
      } else {
        const data = await response.json();
        if (!state.data || data.generated_at !== state.data.generated_at) state.updatedAt = Date.now();
        state.data = data;
        state.etag = response.headers.get('ETag');
        state.error = '';
        draw();
      }
      state.failures = 0;
      state.nextFetchAt = Date.now() + refreshSeconds() * 1000;
    } catch (error) {
      state.failures += 1;
      state.error = error && error.message ? error.message : String(error);
      const backoff = Math.min(MAX_BACKOFF_S, refreshSeconds() * 2 ** Math.min(state.failures, 4));
      state.nextFetchAt = Date.now() + backoff * 1000;
    } finally {
      state.inFlight = false;
      drawStatus();
    }
  }

  function tick() {
    if (!state.paused && !state.inFlight && Date.now() >= state.nextFetchAt) load();
    drawStatus();
    window.setTimeout(tick, TICK_MS);
  }

  // ---- wiring -------------------------------------------------------------------------------

  ui.pause.addEventListener('click', () => {
    state.paused = !state.paused;
    ui.pause.textContent = state.paused ? 'Resume' : 'Pause';
    ui.pause.setAttribute('aria-pressed', String(state.paused));
    if (!state.paused) state.nextFetchAt = 0;
    drawStatus();
  });
  $('controls').addEventListener('submit', (event) => event.preventDefault());
  for (const input of [ui.user, ui.node, ui.free, ui.sort]) {
    input.addEventListener(input.tagName === 'SELECT' || input.type === 'checkbox' ? 'change' : 'input', () => {
      writeHash();
      draw();
    });
  }
  window.addEventListener('hashchange', () => {
    readHash();
    draw();
  });

  readHash();
  tick();
})();
