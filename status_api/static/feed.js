/* The cluster page's feed, a dedicated worker: fetches api/v1/cluster, parses it here, off the
 * page's main thread, and posts only what the page needs to redraw.
 *
 * At 2,000 nodes the document is several megabytes; parsing it and comparing every node with
 * the last one would hold the page's main thread for a long task every refresh. Here each node
 * is compared (as JSON, without last_seen, which moves every round) with what was last posted,
 * and the page gets the nodes' keys in order, their last_seen, and the whole of only the nodes
 * that changed, in batches of BATCH nodes, each its own message: the page takes in one batch
 * per task, so even a refresh in which every node changed is many short tasks, not one long.
 * The page asks with {url}; the answer is one of
 *   {kind: 'unchanged'}                           the document is the one posted last (304)
 *   {kind: 'start', head, keys, lastSeen, changed} head: the document without its nodes;
 *                                                  changed: how many nodes follow, then
 *   {kind: 'nodes', json}                          ... as many such batches as it takes: a
 *                                                  JSON array of nodes without last_seen
 *   {kind: 'error', error}                         a message to show
 * A batch travels as JSON text (the signatures already made), not as objects: the page parses
 * text faster than it takes in a structured clone of the same objects.
 */
'use strict';

const FETCH_TIMEOUT_MS = 15000;
const BATCH = 100; // nodes per message: about 10 ms of the page's work each

let etag = null;
let signatures = new Map(); // node key -> the node's JSON without last_seen, as last posted

async function fetchDocument(url) {
  const headers = etag ? { 'If-None-Match': etag } : {};
  const signal = AbortSignal.timeout ? AbortSignal.timeout(FETCH_TIMEOUT_MS) : undefined;
  const response = await fetch(url, { headers, cache: 'no-store', signal });
  if (response.status === 304) return null;
  if (!response.ok) throw new Error('HTTP ' + response.status);
  const data = await response.json();
  if (!data || typeof data !== 'object' || !Array.isArray(data.nodes)) {
    throw new Error('not a cluster document');
  }
  return { data, etag: response.headers.get('ETag') };
}

// The message for the page, and the signatures to keep once it is posted.
function delta(data) {
  const keys = [];
  const lastSeen = [];
  const changed = [];
  const next = new Map();
  for (const node of data.nodes) {
    if (!node || typeof node !== 'object') throw new Error('not a cluster document');
    const key = String(node.node);
    keys.push(key);
    lastSeen.push(node.last_seen);
    const { last_seen: _seen, ...rest } = node;
    const signature = JSON.stringify(rest);
    next.set(key, signature);
    if (signatures.get(key) !== signature) changed.push(signature);
  }
  const { nodes: _nodes, ...head } = data;
  return { start: { kind: 'start', head, keys, lastSeen, changed: changed.length }, changed, next };
}

self.onmessage = async (event) => {
  try {
    const fetched = await fetchDocument(event.data.url);
    if (!fetched) {
      self.postMessage({ kind: 'unchanged' });
      return;
    }
    const { start, changed, next } = delta(fetched.data);
    self.postMessage(start);
    for (let i = 0; i < changed.length; i += BATCH) {
      self.postMessage({ kind: 'nodes', json: '[' + changed.slice(i, i + BATCH).join(',') + ']' });
    }
    signatures = next; // only once the page has been given this document
    etag = fetched.etag;
  } catch (error) {
    // What was posted before stays the page's: the next answer is a delta against it.
    self.postMessage({ kind: 'error', error: error && error.message ? error.message : String(error) });
  }
};
