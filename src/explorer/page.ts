/**
 * The explorer's HTML and CSS (the script is the esbuild bundle of app.ts). Server-side: the
 * route fills in how this deployment signs people in, so the form asks for the right thing.
 */
import type { AuthMode } from '../config.js';

const CSS = `
:root { --fg:#1d2430; --muted:#5b6475; --line:#d9dee7; --bg:#fff; --accent:#1f5fbf; --bad:#b3261e; --ok:#1b7f3b; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 1rem; padding: .6rem 1rem; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.1rem; margin: 0; }
header .spacer { flex: 1; }
main, #signin { padding: 1rem; }
form.filters { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .5rem; align-items: end; }
label { display: flex; flex-direction: column; gap: .15rem; font-size: .8rem; color: var(--muted); }
input, select, textarea, button { font: inherit; color: inherit; }
input, select, textarea { border: 1px solid var(--line); border-radius: 4px; padding: .35rem .45rem; background: #fff; width: 100%; min-width: 0; }
input[type=checkbox] { width: auto; }
textarea { min-height: 2.2rem; resize: vertical; font-family: ui-monospace, monospace; }
button { border: 1px solid var(--accent); background: var(--accent); color: #fff; border-radius: 4px; padding: .4rem .8rem; cursor: pointer; }
button.secondary { background: #fff; color: var(--accent); }
button:disabled { opacity: .45; cursor: default; }
:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
.bar { display: flex; flex-wrap: wrap; gap: .6rem; align-items: center; margin: .8rem 0; }
.status { color: var(--muted); }
.status.error { color: var(--bad); }
.table-wrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 4px; }
table { border-collapse: collapse; width: 100%; min-width: 44rem; }
th, td { text-align: left; padding: .35rem .55rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: #f4f6fa; font-weight: 600; font-size: .8rem; }
tbody tr { cursor: pointer; }
tbody tr:hover, tbody tr:focus { background: #eef3fc; }
td.outcome.failure { color: var(--bad); }
td.outcome.success { color: var(--ok); }
#detail { position: fixed; inset: 0 0 0 auto; width: min(36rem, 100vw); background: #fff; border-left: 1px solid var(--line);
  box-shadow: -4px 0 16px rgba(0,0,0,.08); padding: 1rem; overflow-y: auto; }
#detail dl { display: grid; grid-template-columns: 9rem 1fr; gap: .2rem .6rem; }
#detail dt { color: var(--muted); }
#detail dd { margin: 0; word-break: break-all; }
pre { background: #f4f6fa; padding: .6rem; border-radius: 4px; overflow-x: auto; }
@media (max-width: 600px) {
  header { flex-wrap: wrap; }
  form.filters { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  #detail dl { grid-template-columns: 1fr; }
}`;

/** The page; `authMode` decides what the sign-in form asks for. */
export function explorerPage(authMode: AuthMode): string {
  const dev = authMode === 'dev';
  const credentialLabel = dev
    ? 'Tenant id (AUTH_MODE=dev)'
    : authMode === 'keys'
      ? 'API key'
      : authMode === 'jwt'
        ? 'Token'
        : 'API key or token';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>auditgraph explorer</title>
<link rel="icon" href="data:,">
<style>${CSS}</style>
</head>
<body>
<header>
  <h1>auditgraph explorer</h1>
  <span class="spacer"></span>
  <span id="who"></span>
  <button id="signout" class="secondary" type="button">Sign out</button>
</header>
<section id="signin">
  <form id="signin-form">
    <p>Sign in for this tab only (kept in its session storage).</p>
    <input type="hidden" id="credential-kind" value="${dev ? 'tenant' : 'bearer'}">
    <label>${credentialLabel}
      <input id="credential" name="credential" autocomplete="off" required autofocus
        ${dev ? 'placeholder="demo"' : 'type="password"'}>
    </label>
    <p><button type="submit">Sign in</button></p>
  </form>
</section>
<main id="main" hidden>
  <form id="filter-form" class="filters" aria-label="Filter">
    <label>Correlation id <input id="f-correlationId"></label>
    <label>Event types (comma-separated) <input id="f-eventTypes"></label>
    <label>Actor id <input id="f-actorId"></label>
    <label>Resource id <input id="f-resourceId"></label>
    <label>Category <input id="f-category"></label>
    <label>Action <input id="f-action"></label>
    <label>Outcome
      <select id="f-outcome"><option value="">any</option><option>SUCCESS</option><option>FAILURE</option><option>PENDING</option></select>
    </label>
    <label>From (UTC) <input id="f-occurredAfter" type="datetime-local"></label>
    <label>To (UTC) <input id="f-occurredBefore" type="datetime-local"></label>
    <label>Data contains (JSON) <textarea id="f-dataContains" placeholder='{"plan":"pro"}'></textarea></label>
    <button type="submit">Apply</button>
  </form>
  <div class="bar">
    <button id="previous" type="button" class="secondary" disabled>← Newer</button>
    <button id="next" type="button" class="secondary" disabled>Older →</button>
    <label style="flex-direction:row;align-items:center;gap:.3rem"><input id="tail" type="checkbox"> Live tail</label>
    <span id="tail-state" class="status"></span>
    <button id="export" type="button" class="secondary">Export this filter</button>
    <span id="status" class="status" role="status" aria-live="polite"></span>
  </div>
  <div class="table-wrap">
    <table>
      <thead><tr><th>Occurred (UTC)</th><th>Type</th><th>Outcome</th><th>Actor</th><th>Resource</th><th>Correlation id</th></tr></thead>
      <tbody id="rows"></tbody>
    </table>
  </div>
</main>
<aside id="detail" hidden aria-label="Event">
  <div class="bar">
    <button id="close-detail" type="button" class="secondary">Close</button>
    <button id="verify" type="button" class="secondary">Verify this month</button>
    <span id="verify-result" class="status" role="status"></span>
  </div>
  <dl id="detail-fields"></dl>
  <h2 style="font-size:1rem">data</h2>
  <pre id="detail-data"></pre>
</aside>
<script type="module" src="/explorer/app.js"></script>
</body>
</html>`;
}
