/* What app.js and users.js share, loaded before both: building DOM nodes and showing numbers.
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

  window.gpuPage = Object.freeze({ el, isNumber, mib });
})();
