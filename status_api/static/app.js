/* The cluster page: draws one card per node of api/v1/cluster, which static/feed.js (a worker)
 * fetches and parses off the main thread, posting only the nodes that changed.
 *
 * Everything shown comes from the nodes and is untrusted (a command line can hold anything), so
 * the DOM is built with createElement and textContent only; no HTML string is ever parsed.
 * One timer drives everything: a setTimeout chain that is re-armed only at the end of a tick,
 * so timers never stack; a fetch already in flight is never started twice.
 *
 * The page stays quick with thousands of nodes:
 * - the document is parsed, and compared with the last one, in the worker: the main thread gets
 *   the nodes that changed, in batches it takes in one task each, and for the others only their
 *   last_seen; a refresh in which no node changed redraws nothing but the ages;
 * - the cards are sorted again only when a name, a free count or the set of cards changed;
 * - each node's card is kept from refresh to refresh (keyed by the node's hosts.txt entry) and
 *   each GPU row within it (keyed by uuid, else index); a refresh touches only what changed;
 * - a card's GPU table is built only when the card comes near the viewport; until then a
 *   placeholder of about its height stands in, and an off-screen card that changes is only
 *   marked to be redrawn when it is next seen;
 * - per node and GPU, the text the filters search is prepared once per refresh, and typing in
 *   a filter redraws after a short pause, not on every key.
 */
'use strict';

(function () {
  const TICK_MS = 500;
  const TYPING_PAUSE_MS = 120;
  // How far outside the viewport a card's GPU table is already built, so scrolling shows it.
  const NEAR_VIEWPORT = '1200px 0px';
  // Placeholder height per GPU row (and for the table head) until the table is built.
  const ROW_REM = 2.4;
  const HEAD_REM = 1.7;

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

  const { el, isNumber, mib, nextFetchAt } = window.gpuPage; // static/dom.js

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

  function list(value) {
    return Array.isArray(value) ? value : [];
  }

  function sameItems(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) return false;
    return true;
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

  // What the user filter searches in a GPU: a user name, a Slurm job id or a pod name
  // (namespace/pod) of any of its processes, lower-cased once per refresh. A separator that
  // cannot be typed keeps a match from running across two names.
  function userText(gpu) {
    const parts = [];
    for (const u of list(gpu.users)) {
      for (const text of [u.username, u.slurm_job, u.pod, u.namespace && u.pod ? u.namespace + '/' + u.pod : '']) {
        if (text) parts.push(String(text).toLowerCase());
      }
    }
    return parts.join('\u0000');
  }

  function nodeText(node) {
    return [node.hostname, node.node, node.address]
      .concat(list(node.ips).map((pair) => (Array.isArray(pair) ? pair[1] : '')))
      .join('\u0000')
      .toLowerCase();
  }

  // ---- summary ------------------------------------------------------------------------------

  function summaryItem(label, value, detail, className) {
    const item = el('div', 'stat ' + (className || ''));
    item.append(el('span', 'stat-value', value), el('span', 'stat-label', label));
    if (detail) item.append(el('span', 'stat-detail', detail));
    return item;
  }

  let summaryKey = '';

  function drawSummary(data) {
    const s = data.summary;
    const key = JSON.stringify(s);
    if (key === summaryKey) return;
    summaryKey = key;
    const nodesDetail = [s.nodes_stale ? s.nodes_stale + ' stale' : '',
      s.nodes_offline ? s.nodes_offline + ' offline' : ''].filter(Boolean).join(', ');
    const items = [
      summaryItem('nodes online', s.nodes_online + ' / ' + s.nodes_total, nodesDetail,
        s.nodes_offline ? 'has-offline' : ''),
      summaryItem('GPUs free', String(s.gpus_free), 'of ' + s.gpus_total, 'is-free'),
      summaryItem('GPUs in use', String(s.gpus_in_use),
        [s.gpus_idle_held ? s.gpus_idle_held + ' idle-held' : '',
          s.gpus_stale ? s.gpus_stale + ' stale' : ''].filter(Boolean).join(', ') ||
          'of ' + s.gpus_total),
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

  // The user filter's suggestions. A browser re-reads the whole list on every key, so with
  // thousands of users it offers only the first names that contain what is typed.
  const MAX_SUGGESTIONS = 50;
  let knownUsers = [];
  let suggestionsKey = null;

  // Sorted again only when a name came or went: with thousands of users the sort is the cost.
  function collectKnownUsers(data) {
    const known = new Set();
    for (const n of data.nodes) {
      for (const g of list(n.gpus)) for (const u of list(g.users)) if (u.username) known.add(String(u.username));
    }
    if (known.size === knownUsers.length && knownUsers.every((name) => known.has(name))) return;
    knownUsers = Array.from(known).sort(collator.compare);
    suggestionsKey = null;
  }

  function drawSuggestions() {
    const typed = ui.user.value.trim().toLowerCase();
    if (typed === suggestionsKey) return;
    suggestionsKey = typed;
    const names = [];
    for (const name of knownUsers) {
      if (names.length >= MAX_SUGGESTIONS) break;
      if (!typed || name.toLowerCase().includes(typed)) names.push(name);
    }
    ui.users.replaceChildren(...names.map((name) => {
      const option = document.createElement('option');
      option.value = name;
      return option;
    }));
  }

  // ---- one GPU row --------------------------------------------------------------------------

  function userChip(user) {
    const chip = el('span', 'user');
    // a known owner links to their own view (static/user.js opens it without a reload)
    const name = user.username ? el('a', 'user-name', user.username) : el('span', 'user-name', '(unknown)');
    if (user.username) name.href = '?user=' + encodeURIComponent(user.username);
    chip.append(name, el('span', 'user-mem', mib(user.mem)));
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

  // A MIG instance: its profile, where it sits (GPU and compute instance), its memory, and the
  // processes that run on it.
  function migInstance(instance, users) {
    const box = el('div', 'mig');
    const head = el('div', 'mig-head');
    head.append(el('span', 'mig-profile', instance.profile || 'MIG'));
    const where = [isNumber(instance.gpu_instance) ? 'GI ' + instance.gpu_instance : '',
      isNumber(instance.compute_instance) ? 'CI ' + instance.compute_instance : ''].filter(Boolean).join(' · ');
    if (where) head.append(el('span', 'mig-place', where));
    head.title = String(instance.uuid || '');
    box.append(head, bar(percent(instance.memory_used_mib, instance.memory_total_mib), 'mem',
      mib(instance.memory_used_mib) + ' / ' + mib(instance.memory_total_mib)));
    const chips = el('div', 'mig-users');
    if (users.length) chips.append(...users.map(userChip));
    else chips.append(el('span', 'no-users', 'no processes'));
    box.append(chips);
    return box;
  }

  // The processes, and on a MIG GPU its instances each with its own processes; a process whose
  // instance is not listed (or an older service without MIG fields) is shown with the GPU.
  function usersCell(gpu) {
    const cell = el('td', 'gpu-users');
    const users = list(gpu.users);
    const instances = list(gpu.mig).filter((m) => m && typeof m === 'object');
    const onInstance = new Map(instances.map((m) => [String(m.uuid || ''), []]));
    const direct = [];
    for (const user of users) {
      const bucket = user.mig_uuid ? onInstance.get(String(user.mig_uuid)) : undefined;
      if (bucket) bucket.push(user);
      else direct.push(user);
    }
    if (direct.length) cell.append(...direct.map(userChip));
    else if (!instances.length) cell.append(el('span', 'no-users', 'no processes'));
    if (instances.length) {
      const migs = el('div', 'mig-list');
      migs.append(...instances.map((m) => migInstance(m, onInstance.get(String(m.uuid || '')))));
      cell.append(migs);
    }
    return cell;
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
    const reasonList = el('div', 'health-reasons');
    for (const reason of reasons) reasonList.append(el('div', 'health-reason', reason));
    id.append(reasonList);
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
    name.title = String(gpu.name);
    id.append(name);

    const memory = el('td', 'gpu-mem');
    memory.append(bar(percent(gpu.use_mem, gpu.tot_mem), 'mem', mib(gpu.use_mem) + ' / ' + mib(gpu.tot_mem)));

    const util = el('td', 'gpu-util');
    util.append(bar(percent(gpu.utilize, 100), 'util', isNumber(gpu.utilize) ? gpu.utilize + ' %' : '–'));
    // SM activity (GPM): how much of the GPU the kernels really keep busy.
    if (isNumber(gpu.sm_active)) {
      const sm = el('div', 'sm-active', 'SM ' + Math.round(gpu.sm_active * 100) + ' %');
      sm.title = 'SM activity: the share of streaming multiprocessors busy (utilization only says a kernel was running)';
      util.append(sm);
    }
    if (gpu.sm_idle) {
      const mark = el('div', 'sm-idle-mark', 'busy, SMs nearly idle');
      mark.title = 'A kernel runs most of the time but keeps almost no SMs busy: a tiny kernel in a loop, or a job waiting on its data';
      util.append(mark);
      row.classList.add('sm-idle');
    }

    const temp = el('td', 'gpu-temp ' + temperatureClass(gpu.temp),
      isNumber(gpu.temp) ? gpu.temp + ' °C' : '–');

    const power = el('td', 'gpu-power', isNumber(gpu.power) ? Math.round(gpu.power) + ' W' : '–');
    if (isNumber(gpu.power) && isNumber(gpu.power_limit)) {
      power.append(el('div', 'power-limit', 'of ' + Math.round(gpu.power_limit) + ' W'));
    }

    row.append(id, ...gpuHealth(gpu, row, id, [memory, util, temp, power]), usersCell(gpu));
    return row;
  }

  function gpuKey(gpu) {
    return gpu.uuid ? 'uuid ' + gpu.uuid : 'index ' + gpu.index;
  }

  // ---- one node card, kept across refreshes -------------------------------------------------

  // Per node (by its hosts.txt entry): its card, its latest document and what is drawn of it.
  const cards = new Map();
  // Cards near the viewport: the only ones whose GPU tables are kept up to date right away.
  const nearby = new Set();
  const observer = new IntersectionObserver(onIntersection, { rootMargin: NEAR_VIEWPORT });

  function newCard(key) {
    const card = el('article', 'node');
    card.dataset.node = key;
    const record = {
      key,
      card,
      node: null,
      nodeText: '',
      gpuTexts: [],
      free: 0,
      shown: [], // the node's GPUs that pass the filters
      headKey: null,
      seen: null,
      age: null,
      body: null, // the element after the header: message, placeholder or table
      bodyKey: null,
      table: null,
      tbody: null,
      rows: new Map(), // GPU key -> {row, sig}
      stale: true, // what is drawn of the GPUs no longer matches the data
    };
    card.__record = record;
    observer.observe(card);
    return record;
  }

  // Both times are the service's clock, so the age does not depend on this browser's clock.
  function ageOf(node, generatedAt) {
    return isNumber(node.last_seen) && isNumber(generatedAt) ? Math.max(0, generatedAt - node.last_seen) : null;
  }

  function setNode(record, node, generatedAt) {
    const before = record.node;
    record.node = node;
    record.nodeText = nodeText(node);
    const gpus = list(node.gpus);
    record.gpuTexts = gpus.map(userText);
    const free = gpus.reduce((count, gpu) => count + (gpu.free ? 1 : 0), 0);
    if (!before || before.hostname !== node.hostname || record.free !== free) orderDirty = true;
    record.free = free;
    record.age = ageOf(node, generatedAt);
    record.stale = true;
    drawHead(record);
  }

  // A node unchanged but for last_seen: its age moves, nothing else is redrawn.
  function touchNode(record, node, generatedAt) {
    record.node = node;
    const age = ageOf(node, generatedAt);
    if ((age === null) !== (record.age === null)) {
      setNode(record, node, generatedAt);
      return;
    }
    record.age = age; // shown by drawSeen, on the cards in sight only
  }

  function drawSeen(record, sinceUpdate) {
    if (record.seen) {
      record.seen.textContent = 'seen ' + ago(record.age === null ? null : record.age + sinceUpdate);
    }
  }

  // The header, address line and error: rebuilt only when one of them changes.
  function drawHead(record) {
    const node = record.node;
    const key = JSON.stringify([node.state, node.hostname, node.address, node.ips, node.error,
      record.free, record.age === null]);
    if (key === record.headKey) return;
    record.headKey = key;
    const card = record.card;
    card.className = 'node ' + node.state;
    const header = el('header', 'node-head');
    header.append(el('h2', 'node-name', node.hostname), el('span', 'badge ' + node.state, node.state));
    if (record.free) header.append(el('span', 'free-count', record.free + ' free'));
    const meta = el('div', 'node-meta');
    if (node.address !== node.hostname) meta.append(el('span', 'node-address', node.address));
    for (const pair of list(node.ips)) meta.append(el('span', 'ip', pair[0] + ' ' + pair[1]));
    const seen = el('span', 'last-seen');
    meta.append(seen);
    record.seen = seen;
    drawSeen(record, (Date.now() - state.updatedAt) / 1000);
    const parts = [header, meta];
    if (node.error) parts.push(el('div', 'node-error', node.error));
    if (record.body) parts.push(record.body);
    card.replaceChildren(...parts);
  }

  function setBody(record, body, key) {
    if (record.body === body) return;
    if (record.body) record.body.replaceWith(body);
    else record.card.append(body);
    record.body = body;
    record.bodyKey = key;
  }

  // The GPU rows, reusing the row of every GPU whose document has not changed.
  function drawGpus(record) {
    if (!record.tbody) {
      const table = el('table', 'gpus');
      const head = el('tr');
      for (const name of ['GPU', 'Memory', 'Util', 'Temp', 'Power', 'Users']) head.append(el('th', null, name));
      const thead = el('thead');
      thead.append(head);
      record.tbody = el('tbody');
      table.append(thead, record.tbody);
      record.table = table;
    }
    setBody(record, record.table, 'table');
    const present = new Set();
    const rows = [];
    for (const gpu of list(record.node.gpus)) {
      const key = gpuKey(gpu);
      present.add(key);
      const sig = JSON.stringify(gpu);
      let kept = record.rows.get(key);
      if (!kept || kept.sig !== sig) {
        kept = { row: gpuRow(gpu), sig };
        record.rows.set(key, kept);
      }
      if (record.shown.includes(gpu)) rows.push(kept.row);
    }
    for (const key of Array.from(record.rows.keys())) if (!present.has(key)) record.rows.delete(key);
    if (!sameItems(Array.from(record.tbody.children), rows)) record.tbody.replaceChildren(...rows);
  }

  function placeholder(height) {
    const box = el('div', 'gpus-pending');
    box.style.height = height;
    return box;
  }

  // The part under the header; the GPU table only for a card near the viewport (or already
  // built, when it is brought up to date the next time it comes near).
  function drawBody(record, near) {
    const node = record.node;
    if (node.state === 'offline') {
      if (record.bodyKey !== 'offline') setBody(record, el('div', 'node-empty', 'no data from this node'), 'offline');
      record.stale = false;
    } else if (!list(node.gpus).length) {
      if (record.bodyKey !== 'none') setBody(record, el('div', 'node-empty', 'no GPUs reported'), 'none');
      record.stale = false;
    } else if (near) {
      drawGpus(record);
      record.stale = false;
    } else if (!record.tbody) {
      const height = (HEAD_REM + ROW_REM * record.shown.length).toFixed(1) + 'rem';
      if (record.bodyKey !== 'pending ' + height) setBody(record, placeholder(height), 'pending ' + height);
    }
  }

  function onIntersection(entries) {
    const sinceUpdate = (Date.now() - state.updatedAt) / 1000;
    for (const entry of entries) {
      const record = entry.target.__record;
      if (!record) continue;
      if (entry.isIntersecting) {
        nearby.add(record);
        if (record.stale && record.node) comingNear.push(record);
        drawSeen(record, sinceUpdate);
      } else {
        nearby.delete(record);
      }
    }
    buildNear();
  }

  // GPU tables of the cards that came near, built a few milliseconds' worth per frame: when a
  // first render or a jump down the list brings dozens of cards near at once, building all of
  // their tables in one go would be one long task.
  const NEAR_BUDGET_MS = 12;
  const comingNear = [];
  let nearFrame = false;

  function buildNear() {
    const until = performance.now() + NEAR_BUDGET_MS;
    while (comingNear.length && performance.now() < until) {
      const record = comingNear.shift();
      if (nearby.has(record) && record.stale && record.node) drawBody(record, true);
    }
    if (comingNear.length && !nearFrame) {
      nearFrame = true;
      requestAnimationFrame(() => {
        nearFrame = false;
        buildNear();
      });
    }
  }

  // ---- the list -----------------------------------------------------------------------------

  // The nodes of one batch from the feed: their cards brought up to date (cheap off-screen).
  function takeNodes(nodes, lastSeen, generatedAt) {
    for (const node of nodes) {
      const key = String(node.node);
      node.last_seen = lastSeen.get(key); // the feed leaves it out of the nodes it sends
      nodesByKey.set(key, node);
      let record = cards.get(key);
      if (!record) {
        record = newCard(key);
        cards.set(key, record);
      }
      setNode(record, node, generatedAt);
    }
  }

  // Once every changed node is in: the others' ages, and the cards of nodes that left.
  function absorb(data, changed) {
    const present = new Set();
    for (const node of data.nodes) {
      const key = String(node.node);
      present.add(key);
      if (changed.has(node)) continue;
      const record = cards.get(key);
      if (record) touchNode(record, node, data.generated_at);
    }
    for (const [key, record] of cards) {
      if (present.has(key)) continue;
      observer.unobserve(record.card);
      nearby.delete(record);
      record.card.remove();
      cards.delete(key);
      orderDirty = true;
    }
  }

  // Every card in the chosen order, sorted again only when a name, a free count, the cards or
  // the order chosen changed: with thousands of nodes a sort is a good part of a redraw.
  let orderDirty = true;
  let sortedBy = null;
  let sorted = [];

  function sortedCards(sort) {
    if (orderDirty || sortedBy !== sort) {
      sorted = Array.from(cards.values()).filter((record) => record.node);
      sorted.sort((a, b) => (sort === 'free' ? b.free - a.free : 0) ||
        collator.compare(a.node.hostname, b.node.hostname) || collator.compare(a.key, b.key));
      orderDirty = false;
      sortedBy = sort;
    }
    return sorted;
  }

  let shownOrder = [];

  function draw() {
    const data = state.data;
    if (!data) return;
    const f = filters();
    const filtering = f.user || f.free;
    const order = [];
    for (const record of sortedCards(f.sort)) {
      const node = record.node;
      if (f.node && !record.nodeText.includes(f.node)) continue;
      const gpus = list(node.gpus);
      const shown = filtering
        ? gpus.filter((gpu, i) => (!f.free || gpu.free) && (!f.user || record.gpuTexts[i].includes(f.user)))
        : gpus;
      if (filtering && !shown.length) continue;
      if (!sameItems(shown, record.shown)) {
        record.shown = shown;
        record.stale = true;
      }
      order.push(record);
    }
    const cardsInOrder = order.map((record) => record.card);
    if (!sameItems(cardsInOrder, shownOrder)) {
      ui.nodes.replaceChildren(...cardsInOrder);
      shownOrder = cardsInOrder;
    }
    for (const record of order) if (record.stale) drawBody(record, nearby.has(record));
    ui.empty.hidden = order.length > 0;
  }

  function refresh(data, changed) {
    drawSummary(data);
    const before = cards.size;
    absorb(data, changed);
    if (!changed.size && cards.size === before) return; // only ages moved: drawStatus shows them
    draw();
    collectKnownUsers(data);
    drawSuggestions();
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
    // Ages keep counting between refreshes (and while paused) on the cards in sight; a card
    // coming into sight catches up then.
    const sinceUpdate = (Date.now() - state.updatedAt) / 1000;
    for (const record of nearby) drawSeen(record, sinceUpdate);
  }

  // ---- fetching -----------------------------------------------------------------------------

  const feed = new Worker('static/feed.js');
  const feedUrl = new URL('api/v1/cluster', location.href).href;
  const nodesByKey = new Map(); // the latest document's nodes, by key, as the feed posted them

  function load() {
    state.inFlight = true;
    feed.postMessage({ url: feedUrl });
  }

  // A document on its way from the feed: its head, keys and last_seen, and the changed nodes
  // taken in so far (a batch per message, so per task).
  let arriving = null;

  function assemble(start) {
    const nodes = start.keys.map((key, i) => {
      const node = nodesByKey.get(key);
      node.last_seen = start.lastSeen[i];
      return node;
    });
    if (nodesByKey.size !== nodes.length) {
      const present = new Set(start.keys);
      for (const key of Array.from(nodesByKey.keys())) if (!present.has(key)) nodesByKey.delete(key);
    }
    return Object.assign({}, start.head, { nodes });
  }

  function finish(error) {
    if (error) {
      state.failures += 1;
      state.error = error;
    } else {
      state.error = '';
      state.failures = 0;
    }
    arriving = null;
    state.nextFetchAt = nextFetchAt(state.data, state.failures);
    state.inFlight = false;
    drawStatus();
  }

  function complete() {
    const { start, changed } = arriving;
    const data = assemble(start);
    if (!state.data || data.generated_at !== state.data.generated_at) state.updatedAt = Date.now();
    state.data = data;
    refresh(data, changed);
  }

  function received(message) {
    try {
      if (message.kind === 'error') throw new Error(message.error);
      if (message.kind === 'unchanged') {
        finish('');
        return;
      }
      if (message.kind === 'start') {
        const lastSeen = new Map(message.keys.map((key, i) => [key, message.lastSeen[i]]));
        arriving = { start: message, lastSeen, changed: new Set(), left: message.changed };
      } else if (message.kind === 'nodes' && arriving) {
        const nodes = JSON.parse(message.json);
        if (!Array.isArray(nodes)) throw new Error('not a cluster document');
        takeNodes(nodes, arriving.lastSeen, arriving.start.head.generated_at);
        for (const node of nodes) arriving.changed.add(node);
        arriving.left -= nodes.length;
      } else {
        return;
      }
      if (arriving.left > 0) return; // more batches to come, each in a task of its own
      complete();
      finish('');
    } catch (error) {
      finish(error && error.message ? error.message : String(error));
    }
  }

  feed.onmessage = (event) => received(event.data);
  feed.onerror = (event) => {
    event.preventDefault();
    received({ kind: 'error', error: 'the page feed failed: ' + (event.message || 'unknown error') });
  };

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

  function applyFilters() {
    writeHash();
    draw();
    drawSuggestions();
  }
  // Typing redraws once the keys pause. Each key only moves the deadline forward; at most one
  // timer waits for it, and it is never cancelled, only re-armed for the time still left.
  let typedUntil = 0;
  let typingTimer = false;
  function afterTyping() {
    const left = typedUntil - Date.now();
    if (left > 0) {
      window.setTimeout(afterTyping, left);
      return;
    }
    typingTimer = false;
    applyFilters();
  }
  for (const input of [ui.user, ui.node]) {
    input.addEventListener('input', () => {
      typedUntil = Date.now() + TYPING_PAUSE_MS;
      if (!typingTimer) {
        typingTimer = true;
        window.setTimeout(afterTyping, TYPING_PAUSE_MS);
      }
    });
  }
  for (const input of [ui.free, ui.sort]) input.addEventListener('change', applyFilters);
  window.addEventListener('hashchange', () => {
    readHash();
    draw();
    drawSuggestions();
  });

  readHash();
  tick();
})();
