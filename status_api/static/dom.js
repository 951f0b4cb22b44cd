/* What app.js and users.js share, loaded before both: building DOM nodes, showing numbers, and
 * fetching a document again every round of the service.
 *
 * Text only ever goes in through textContent: names and commands come from the nodes and are
 * untrusted.
 */
'use strict';

(function () {
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

  const MIN_REFRESH_S = 1;
  const MAX_BACKOFF_S = 30;
  const FETCH_TIMEOUT_MS = 15000;

  // One GET with If-None-Match: null when the document is unchanged (304), else its JSON and
  // ETag. Throws on an HTTP error and after FETCH_TIMEOUT_MS: a request that never completes
  // must not stop the refreshes.
  async function fetchIfChanged(url, etag) {
    const headers = etag ? { 'If-None-Match': etag } : {};
    const signal = AbortSignal.timeout ? AbortSignal.timeout(FETCH_TIMEOUT_MS) : undefined;
    const response = await fetch(url, { headers, cache: 'no-store', signal });
    if (response.status === 304) return null;
    if (!response.ok) throw new Error('HTTP ' + response.status);
    return { data: await response.json(), etag: response.headers.get('ETag') };
  }

  // When to fetch next (ms since the epoch): after the service's round interval (from its last
  // document), doubled per failure in a row up to MAX_BACKOFF_S.
  function nextFetchAt(data, failures) {
    const interval = data && isNumber(data.interval) ? data.interval : 3;
    const seconds = Math.max(MIN_REFRESH_S, interval);
    const delay = failures ? Math.min(MAX_BACKOFF_S, seconds * 2 ** Math.min(failures, 4)) : seconds;
    return Date.now() + delay * 1000;
  }

  window.gpuPage = Object.freeze({ el, isNumber, mib, fetchIfChanged, nextFetchAt });
})();
