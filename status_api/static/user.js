/* One user's own view: opened by ?user=NAME, by a click on a name in the users table or on a
 * process owner in a node card.
 *
 * "Now" is the cluster view itself, filtered to the user through the page's user filter
 * (#filter-user, whose input event app.js handles and keeps in #user=NAME), with what the user
 * holds from api/v1/users. The last days come from api/v1/users/NAME/history (a query engine
 * only) and are drawn here as three small bar charts in inline SVG: GPU-hours, mean utilization
 * and energy per day. Names are untrusted: text goes in through textContent, SVG through
 * createElementNS and setAttribute only. The view is in the URL's query (?user=NAME) so it can
 * be bookmarked and sent; the hash stays the filters' own.
 */
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const DAYS = 7;
  const CHART = { width: 280, height: 120, top: 16, bottom: 18, gap: 4 };
  const CHARTS = [
    { key: 'gpu_hours', title: 'GPU-hours per day', format: (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1)) },
    { key: 'mean_utilization', title: 'Mean utilization', format: (v) => Math.round(v * 100) + '%', max: 1 },
    { key: 'energy_kwh', title: 'Energy per day (kWh)', format: (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(2)) },
  ];

  const root = document.getElementById('user-view');
  if (!root) return;
  const filter = document.getElementById('filter-user');
  const { el, isNumber, mib } = window.gpuPage; // static/dom.js

  let current = null; // the user shown, or null
  let asked = 0; // drops answers for a user no longer shown

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    return node;
  }

  function svgText(x, y, text, className) {
    const node = svg('text', { x, y, class: className, 'text-anchor': 'middle' });
    node.textContent = text;
    return node;
  }

  // One bar per day; a day without a value has an empty bar and a dash, so the days line up.
  function chart(spec, days) {
    const box = el('figure', 'user-chart');
    box.dataset.chart = spec.key;
    box.append(el('figcaption', 'user-chart-title', spec.title));
    const values = days.map((day) => (isNumber(day[spec.key]) ? day[spec.key] : null));
    const top = Math.max(spec.max || 0, ...values.filter((v) => v !== null), 0) || 1;
    const slot = CHART.width / Math.max(days.length, 1);
    const plot = CHART.height - CHART.top - CHART.bottom;
    const image = svg('svg', {
      viewBox: '0 0 ' + CHART.width + ' ' + CHART.height, class: 'user-chart-svg', role: 'img',
      'aria-label': spec.title,
    });
    days.forEach((day, index) => {
      const value = values[index];
      const height = value === null ? 0 : (value / top) * plot;
      const x = index * slot + CHART.gap / 2;
      const centre = index * slot + slot / 2;
      const bar = svg('rect', {
        x, y: CHART.top + plot - height, width: slot - CHART.gap, height,
        class: value === null ? 'user-bar missing' : 'user-bar',
      });
      bar.dataset.date = String(day.date);
      const shown = value === null ? '–' : spec.format(value);
      const tip = svg('title');
      tip.textContent = day.date + ': ' + shown;
      bar.append(tip);
      image.append(bar,
        svgText(centre, CHART.top + plot - height - 3, shown, 'bar-value'),
        svgText(centre, CHART.height - 4, String(day.date).slice(5), 'bar-label'));
    });
    box.append(image);
    return box;
  }

  function nowLine(name, data) {
    const rows = data && Array.isArray(data.users) ? data.users : [];
    const row = rows.find((r) => r.user === name);
    if (!row || !row.gpus) return el('p', 'user-now', name + ' holds no GPU now.');
    let text = name + ' holds ' + row.gpus + (row.gpus === 1 ? ' GPU' : ' GPUs') + ' now, ' + mib(row.memory_mib);
    if (row.idle_held_gpus) text += ', ' + row.idle_held_gpus + ' of them idle';
    return el('p', 'user-now', text + ' (their GPUs are the ones shown below).');
  }

  function historyPart(name, answer) {
    const part = el('div', 'user-history');
    if (!answer) {
      part.append(el('p', 'user-history-note', 'Loading the last ' + DAYS + ' days…'));
    } else if (answer.error) {
      part.append(el('p', 'user-history-note user-history-error', answer.error));
    } else if (!answer.data.configured) {
      part.append(el('p', 'user-history-note', answer.data.message || 'No history without a query engine.'));
    } else {
      const days = Array.isArray(answer.data.days) ? answer.data.days : [];
      const charts = el('div', 'user-charts');
      for (const spec of CHARTS) charts.append(chart(spec, days));
      part.append(charts);
    }
    return part;
  }

  function draw(name, now, answer) {
    const close = el('button', 'user-close', 'Show everyone');
    close.type = 'button';
    close.addEventListener('click', () => show(null, true));
    const head = el('div', 'user-head');
    head.append(el('h2', 'user-title', name), close);
    root.replaceChildren(head, nowLine(name, now), historyPart(name, answer));
    root.hidden = false;
  }

  async function json(url) {
    const response = await fetch(url, { cache: 'no-store' });
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    return { status: response.status, body };
  }

  async function loadHistory(name) {
    try {
      const { status, body } = await json('api/v1/users/' + encodeURIComponent(name) + '/history?days=' + DAYS);
      if (status === 200 && body) return { data: body };
      if (status === 404) return { error: 'No GPU use recorded for ' + name + ' in the last ' + DAYS + ' days.' };
      return { error: 'History unavailable: ' + (body && body.error ? body.error : 'HTTP ' + status) };
    } catch (error) {
      return { error: 'History unavailable: the service did not answer.' };
    }
  }

  async function users() {
    try {
      const { status, body } = await json('api/v1/users');
      return status === 200 ? body : null;
    } catch (error) {
      return null;
    }
  }

  function setFilter(value) {
    if (!filter || filter.value === value) return;
    filter.value = value;
    filter.dispatchEvent(new Event('input', { bubbles: true }));
  }

  // Shows ``name``'s view (null: nobody's); ``push`` records it in the history and the URL.
  async function show(name, push) {
    if (push) {
      const params = new URLSearchParams(location.search);
      if (name) params.set('user', name);
      else params.delete('user');
      const query = params.toString();
      window.history.pushState(null, '', location.pathname + (query ? '?' + query : '') + location.hash);
    }
    const ticket = ++asked;
    current = name;
    if (!name) {
      root.hidden = true;
      root.replaceChildren();
      setFilter('');
      return;
    }
    setFilter(name);
    draw(name, null, null);
    const [now, answer] = await Promise.all([users(), loadHistory(name)]);
    if (ticket === asked) draw(name, now, answer);
  }

  function fromUrl() {
    const name = new URLSearchParams(location.search).get('user');
    if ((name || null) !== current) show(name || null, false);
  }

  // Owner links in the node cards (built by app.js, redrawn every round): one listener for all.
  document.addEventListener('click', (event) => {
    const link = event.target instanceof Element ? event.target.closest('a.user-name') : null;
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    show(link.textContent, true);
  });
  window.addEventListener('popstate', fromUrl);
  window.gpuUserView = Object.freeze({ open: (name) => show(name, true) });
  fromUrl();
})();
