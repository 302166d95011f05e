// The dashboard's script: reads the API's JSON and draws it with Chart.js. Plain browser
// JavaScript (no build step); every number shown comes from an API endpoint.
'use strict';

const COLORS = { accent: '#3763d6', ok: '#1f9d55', bad: '#d64545', warn: '#c98a14', muted: '#9aa3b5' };
const charts = {};
window.trajstoreDashboard = { charts, ready: false, runId: null };

async function api(path) {
  const res = await fetch(path, { headers: { accept: 'application/json' } });
  const body = await res.json();
  if (!res.ok) throw new Error(`${body.code}: ${body.message}${body.hint ? ` (${body.hint})` : ''}`);
  return body;
}

function drawChart(id, config, hasData, emptyText) {
  const canvas = document.getElementById(id);
  const box = canvas.parentElement;
  box.querySelector('.empty')?.remove();
  canvas.hidden = !hasData;
  if (!hasData) {
    box.insertAdjacentHTML('beforeend', `<div class="empty">${emptyText}</div>`);
    return;
  }
  if (charts[id]) {
    charts[id].data = config.data;
    charts[id].update('none');
  } else {
    charts[id] = new Chart(canvas, { ...config, options: { responsive: true, maintainAspectRatio: false, animation: false, ...config.options } });
  }
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const num = (x) => (x >= 1000 ? x.toLocaleString('en') : String(Math.round(x * 1000) / 1000));

function renderKpis(summary) {
  const train = summary.outcomes.find((o) => o.purpose === 'train') ?? summary.outcomes[0];
  const items = [
    ['episodes', num(summary.run.episodes)],
    ['success rate', train ? pct(train.success_rate) : '–'],
    ['mean reward', train ? train.reward_mean.toFixed(3) : '–'],
    ['groups', num(summary.run.groups)],
    ['turns', num(summary.run.turns)],
    ['policy versions seen', `${summary.run.min_policy_version}–${summary.run.max_policy_version}`],
    ['adapters published', num(summary.published_versions)],
    ['trainer step', summary.latest_step ? num(summary.latest_step.step) : '–', summary.latest_step ? `loss ${summary.latest_step.loss.toFixed(4)}` : 'not trained yet'],
  ];
  document.getElementById('kpis').innerHTML = items
    .map(([l, v, note]) => `<div class="kpi"><div class="label">${l}</div><div class="value">${v}</div>${note ? `<div class="note">${note}</div>` : ''}</div>`)
    .join('');
}

function renderVersions(summary) {
  const rows = summary.by_version.filter((r) => r.purpose === 'train');
  const evalRows = summary.by_version.filter((r) => r.purpose === 'eval');
  const versions = [...new Set(summary.by_version.map((r) => r.policy_version))].sort((a, b) => a - b);
  const at = (list, key) => versions.map((v) => list.find((r) => r.policy_version === v)?.[key] ?? null);
  const datasets = [
    { label: 'success rate', data: at(rows, 'success_rate'), borderColor: COLORS.ok, backgroundColor: COLORS.ok, yAxisID: 'rate', tension: 0.2 },
    { label: 'mean reward', data: at(rows, 'reward_mean'), borderColor: COLORS.accent, backgroundColor: COLORS.accent, yAxisID: 'reward', tension: 0.2, borderDash: [6, 3] },
  ];
  if (evalRows.length) datasets.push({ label: 'eval success rate', data: at(evalRows, 'success_rate'), borderColor: COLORS.warn, backgroundColor: COLORS.warn, yAxisID: 'rate', spanGaps: true });
  drawChart('chart-versions', {
    type: 'line',
    data: { labels: versions.map((v) => `v${v}`), datasets },
    options: {
      scales: {
        rate: { type: 'linear', position: 'left', min: 0, max: 1, title: { display: true, text: 'success rate' }, ticks: { callback: (v) => pct(v) } },
        reward: { type: 'linear', position: 'right', title: { display: true, text: 'mean reward' }, grid: { drawOnChartArea: false } },
        x: { title: { display: true, text: 'policy version' } },
      },
    },
  }, versions.length > 0, 'no finished episodes yet');
}

function renderStaleness(summary) {
  const rows = summary.staleness;
  drawChart('chart-staleness', {
    type: 'bar',
    data: { labels: rows.map((r) => String(r.versions_behind)), datasets: [{ label: 'groups trained', data: rows.map((r) => r.groups), backgroundColor: rows.map((r) => (r.versions_behind === 0 ? COLORS.ok : COLORS.warn)) }] },
    options: { plugins: { legend: { display: false } }, scales: { x: { title: { display: true, text: 'versions behind' } }, y: { beginAtZero: true, title: { display: true, text: 'groups' } } } },
  }, rows.length > 0, 'no trainer steps for this run yet');
}

function renderEpisodeCounts(summary) {
  const rows = summary.by_version.filter((r) => r.purpose === 'train');
  drawChart('chart-episodes', {
    type: 'bar',
    data: {
      labels: rows.map((r) => `v${r.policy_version}`),
      datasets: [
        { label: 'success', data: rows.map((r) => Math.round(r.episodes * r.success_rate)), backgroundColor: COLORS.ok, stack: 's' },
        { label: 'other outcomes', data: rows.map((r) => r.episodes - Math.round(r.episodes * r.success_rate)), backgroundColor: COLORS.muted, stack: 's' },
      ],
    },
    options: { scales: { x: { stacked: true, title: { display: true, text: 'policy version' } }, y: { stacked: true, beginAtZero: true, title: { display: true, text: 'episodes' } } } },
  }, rows.length > 0, 'no finished episodes yet');
}

/** The API returns only buckets that hold events; quiet buckets are drawn as zeros so time stays linear. */
function fillGaps(tp) {
  if (tp.points.length === 0) return [];
  const byTime = new Map(tp.points.map((p) => [p.t_ms, p]));
  const out = [];
  for (let t = tp.points[0].t_ms; t <= tp.points[tp.points.length - 1].t_ms; t += tp.bucket_ms) {
    out.push(byTime.get(t) ?? { t_ms: t, events: 0, turns: 0, episodes: 0 });
  }
  return out;
}

function renderThroughput(tp) {
  const points = fillGaps(tp);
  const seconds = tp.bucket_ms / 1000;
  document.getElementById('throughput-sub').textContent = `events, turns and finished episodes per ${seconds >= 60 ? `${seconds / 60} min` : `${seconds} s`}`;
  const label = (t) => new Date(t).toISOString().slice(11, seconds >= 60 ? 16 : 19);
  drawChart('chart-throughput', {
    type: 'line',
    data: {
      labels: points.map((p) => label(p.t_ms)),
      datasets: [
        { label: 'events', data: points.map((p) => p.events), borderColor: COLORS.muted, backgroundColor: 'rgba(154,163,181,0.25)', fill: true },
        { label: 'turns', data: points.map((p) => p.turns), borderColor: COLORS.accent, backgroundColor: COLORS.accent },
        { label: 'episodes', data: points.map((p) => p.episodes), borderColor: COLORS.ok, backgroundColor: COLORS.ok },
      ],
    },
    options: {
      elements: { point: { radius: 0 }, line: { borderWidth: 1.5, tension: 0.25 } },
      interaction: { mode: 'index', intersect: false },
      scales: { y: { beginAtZero: true }, x: { title: { display: true, text: 'time (UTC)' }, ticks: { maxTicksLimit: 12 } } },
    },
  }, points.length > 0, 'no events yet');
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function renderEpisodes(list) {
  const html = list.episodes.map((e, i) => `
    <details class="episode" data-episode="${escapeHtml(e.episode_id)}" ${i === 0 ? 'open' : ''}>
      <summary><span class="badge ${escapeHtml(e.status)}">${escapeHtml(e.status)}</span>
        <span>reward <b>${e.reward.toFixed(2)}</b></span><span>v${e.policy_version}</span>
        <span>${escapeHtml(e.task_family)} · ${escapeHtml(e.task_id)}</span><span>${e.num_turns} turns</span>
        <span class="mono">${escapeHtml(e.episode_id)}</span><span class="mono">${new Date(e.finished_at_ms).toISOString().slice(11, 19)}</span></summary>
      <div class="turns">${e.turns.map((t) => `
        <div class="turn ${t.screenshot_url ? '' : 'noshot'}">
          ${t.screenshot_url ? `<a href="${t.screenshot_url}" target="_blank"><img loading="lazy" alt="screenshot of turn ${t.turn_index}" src="${t.screenshot_url}"></a>` : ''}
          <div><b>turn ${t.turn_index}</b> · ${t.action_type ? `<span class="mono">${escapeHtml(t.action_type)} ${escapeHtml(t.action_args_json ?? '')}</span>` : `<i>unparsed${t.action_parse_error ? `: ${escapeHtml(t.action_parse_error)}` : ''}</i>`}
            · ${t.latency_ms} ms · ${t.completion_tokens} tokens<pre class="mono">${escapeHtml(t.completion_text)}</pre></div>
        </div>`).join('')}</div>
    </details>`).join('');
  document.getElementById('episodes').innerHTML = html || '<div class="empty">no finished episodes yet</div>';
}

async function load(runId) {
  const errorBox = document.getElementById('error');
  try {
    const enc = encodeURIComponent(runId);
    const [summary, tp, episodes] = await Promise.all([api(`/runs/${enc}`), api(`/runs/${enc}/throughput`), api(`/runs/${enc}/episodes?limit=8`)]);
    renderKpis(summary);
    renderVersions(summary);
    renderStaleness(summary);
    renderEpisodeCounts(summary);
    renderThroughput(tp);
    renderEpisodes(episodes);
    errorBox.hidden = true;
    document.getElementById('updated').textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    window.trajstoreDashboard.runId = runId;
    window.trajstoreDashboard.ready = true;
  } catch (err) {
    errorBox.textContent = String(err.message ?? err);
    errorBox.hidden = false;
  }
}

async function main() {
  const select = document.getElementById('run');
  const wanted = new URLSearchParams(location.search).get('run');
  try {
    const { runs } = await api('/runs?limit=200');
    const ids = runs.map((r) => r.run_id);
    if (wanted && !ids.includes(wanted)) ids.unshift(wanted);
    select.innerHTML = ids.map((id) => `<option>${escapeHtml(id)}</option>`).join('');
    if (wanted) select.value = wanted;
  } catch (err) {
    document.getElementById('error').textContent = String(err.message ?? err);
    document.getElementById('error').hidden = false;
    return;
  }
  const current = () => select.value;
  select.addEventListener('change', () => {
    history.replaceState(null, '', `?run=${encodeURIComponent(current())}`);
    load(current());
  });
  document.getElementById('refresh').addEventListener('click', () => load(current()));
  if (current()) await load(current());
  else document.getElementById('error').textContent = 'no runs in this database yet: start producers and the sink';
  setInterval(() => current() && load(current()), 15_000);
}

main();
