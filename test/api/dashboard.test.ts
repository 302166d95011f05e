/**
 * The dashboard in a real browser: headless Debian Chromium (playwright-core) opens the page of a
 * run made in this test, served by a listening API, and finds every chart drawn with the run's
 * data as the API reports it, and the browser episodes' screenshots loaded. It saves a screenshot
 * of the page (path printed, under .trajstore/test-artifacts/).
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { EXPECTED_STALENESS, GROUP_SIZE, GROUPS, makeTestRun, testApi } from './fixtures.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = resolve(process.env.TRAJSTORE_HOME ?? '.trajstore', 'test-artifacts');

interface DrawnChart { labels: string[]; datasets: Array<{ label: string; data: Array<number | null> }>; paintedPixels: number }

test('the dashboard draws a run\'s charts from the API in headless Chromium', { timeout: 600_000 }, async (t) => {
  const run = await makeTestRun(t);
  const app = await testApi(t, run);
  const address = await app.listen({ host: '127.0.0.1', port: 0 });
  const summary = (await app.inject({ method: 'GET', url: `/runs/${run.runId}` })).json();
  const throughput = (await app.inject({ method: 'GET', url: `/runs/${run.runId}/throughput` })).json();

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, chromiumSandbox: false, args: ['--disable-dev-shm-usage', '--disable-gpu'] });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  await page.goto(`${address}/dashboard?run=${encodeURIComponent(run.runId)}`);
  await page.waitForFunction(() => (window as any).trajstoreDashboard?.ready === true, null, { timeout: 60_000 });

  // Each chart's data as Chart.js holds it, and how many of its canvas pixels are painted.
  const charts = await page.evaluate(() => {
    const out: Record<string, unknown> = {};
    for (const id of ['chart-versions', 'chart-staleness', 'chart-throughput', 'chart-episodes']) {
      const canvas = document.getElementById(id) as HTMLCanvasElement;
      const chart = (window as any).Chart.getChart(canvas);
      if (!chart) continue;
      const pixels = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
      let painted = 0;
      for (let i = 3; i < pixels.length; i += 4) if (pixels[i]! > 0) painted++;
      out[id] = { labels: chart.data.labels, datasets: chart.data.datasets.map((d: any) => ({ label: d.label, data: d.data })), paintedPixels: painted };
    }
    return out;
  }) as Record<string, DrawnChart>;

  const versions = charts['chart-versions'];
  assert.ok(versions, 'success/reward chart drawn');
  assert.deepEqual(versions.labels, ['v0', 'v1', 'v2', 'v3']);
  assert.deepEqual(versions.datasets.find((d) => d.label === 'success rate')?.data, [0.25, 0.5, 0.75, 1]);
  assert.deepEqual(versions.datasets.find((d) => d.label === 'mean reward')?.data, summary.by_version.map((r: any) => r.reward_mean));

  const staleness = charts['chart-staleness'];
  assert.ok(staleness, 'staleness histogram drawn');
  assert.deepEqual(staleness.labels, EXPECTED_STALENESS.map((s) => String(s.versions_behind)));
  assert.deepEqual(staleness.datasets[0]!.data, EXPECTED_STALENESS.map((s) => s.groups));

  const tp = charts['chart-throughput'];
  assert.ok(tp, 'throughput chart drawn');
  const span = throughput.points.at(-1).t_ms - throughput.points[0].t_ms;
  assert.equal(tp.labels.length, span / throughput.bucket_ms + 1, 'one point per bucket, quiet buckets as zeros');
  assert.equal(tp.datasets.find((d) => d.label === 'events')!.data.reduce((n, x) => n! + x!, 0), run.events);
  assert.equal(tp.datasets.find((d) => d.label === 'episodes')!.data.reduce((n, x) => n! + x!, 0), GROUPS * GROUP_SIZE);

  const episodes = charts['chart-episodes'];
  assert.ok(episodes, 'episodes chart drawn');
  assert.deepEqual(episodes.datasets.find((d) => d.label === 'success')?.data, [2, 4, 6, 8]);

  for (const [id, chart] of Object.entries(charts)) assert.ok(chart.paintedPixels > 5000, `${id} has pixels painted (${chart.paintedPixels})`);

  // KPIs and the newest episodes: the first is open, and browser turns show their screenshots.
  const kpis = await page.locator('#kpis .kpi').allInnerTexts();
  assert.ok(kpis.some((k) => /success rate\s+62\.5%/i.test(k)), `success rate KPI in ${JSON.stringify(kpis)}`);
  assert.ok(kpis.some((k) => new RegExp(`episodes\\s+${GROUPS * GROUP_SIZE}$`, 'i').test(k)), 'episodes KPI');
  assert.equal(await page.locator('#episodes details.episode').count(), 8);
  const browserEpisode = page.locator('#episodes details.episode', { has: page.locator('img') }).first();
  await browserEpisode.evaluate((el) => { (el as HTMLDetailsElement).open = true; });
  await browserEpisode.scrollIntoViewIfNeeded();
  const img = browserEpisode.locator('img').first();
  await img.waitFor();
  await page.waitForFunction((el) => (el as HTMLImageElement).complete && (el as HTMLImageElement).naturalWidth > 0, await img.elementHandle(), { timeout: 10_000 });
  assert.equal(await img.evaluate((el) => (el as HTMLImageElement).naturalWidth), 160, 'the screenshot loaded from /blobs');
  assert.deepEqual(pageErrors, [], 'no script errors');

  mkdirSync(ARTIFACTS, { recursive: true });
  const shot = join(ARTIFACTS, 'dashboard.png');
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: shot, fullPage: true });
  t.diagnostic(`dashboard screenshot: ${shot}`);
});
