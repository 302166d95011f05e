/**
 * `services up|status|down` end to end, on a second pair of Kafka and ClickHouse servers in a
 * home and on ports of this test's own, so the suite's shared services are never touched.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isPortFree } from '../../src/services/process.js';

async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  const ports: number[] = [];
  for (let i = 0; i < count; i++) {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    servers.push(server);
    ports.push((server.address() as { port: number }).port);
  }
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Every live process whose command line mentions `marker`. */
function processesMentioning(marker: string): number[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
      } catch {
        return false;
      }
    })
    .map(Number);
}

test('services up twice is a no-op the second time, status reports both, down leaves no process', { timeout: 300_000 }, async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'trajstore-lifecycle-'));
  const [kafkaPort, controllerPort, httpPort, tcpPort] = await freePorts(4);
  const env = {
    ...process.env,
    TRAJSTORE_HOME: home,
    TRAJSTORE_KAFKA_PORT: String(kafkaPort),
    TRAJSTORE_KAFKA_CONTROLLER_PORT: String(controllerPort),
    TRAJSTORE_CLICKHOUSE_HTTP_PORT: String(httpPort),
    TRAJSTORE_CLICKHOUSE_TCP_PORT: String(tcpPort),
    TRAJSTORE_KAFKA_HEAP_MB: '384',
  };
  const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/trajstore.mjs', 'services', ...args], { env, encoding: 'utf8', timeout: 240_000 });
  t.after(() => {
    cli('down');
    rmSync(home, { recursive: true, force: true });
  });

  const first = cli('up');
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stderr, /started kafka, clickhouse/);

  const status = cli('status', '--json');
  assert.equal(status.status, 0, status.stderr);
  const services = JSON.parse(status.stdout) as { name: string; state: string; address: string; version: string; pid: number }[];
  assert.deepEqual(services.map((s) => [s.name, s.state]), [['kafka', 'running'], ['clickhouse', 'running']]);
  assert.equal(services[0]!.address, `127.0.0.1:${kafkaPort}`);
  assert.match(services[0]!.version, /^\d+\.\d+\.\d+$/);
  assert.equal(services[1]!.address, `http://127.0.0.1:${httpPort}`);
  assert.match(services[1]!.version, /^\d+\.\d+/);

  const second = cli('up');
  assert.equal(second.status, 0, second.stderr);
  assert.match(second.stderr, /all services already running/);
  const after = JSON.parse(cli('status', '--json').stdout) as { pid: number }[];
  assert.deepEqual(after.map((s) => s.pid), services.map((s) => s.pid), 'the second up started nothing new');

  assert.ok(processesMentioning(home).length >= 2, 'both servers run from this home');
  const down = cli('down');
  assert.equal(down.status, 0, down.stderr);
  assert.deepEqual(processesMentioning(home), [], 'no process of this home is left');
  for (const port of [kafkaPort!, controllerPort!, httpPort!, tcpPort!]) assert.ok(await isPortFree('127.0.0.1', port), `port ${port} was released`);
  const stopped = cli('status', '--json');
  assert.equal(stopped.status, 3, 'status exits 3 when a service is not running');
  assert.deepEqual((JSON.parse(stopped.stdout) as { state: string }[]).map((s) => s.state), ['stopped', 'stopped']);
});

test('services up on a taken port fails with the port and what to do', { timeout: 120_000 }, async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'trajstore-port-'));
  const squatter = createServer();
  await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  const port = (squatter.address() as { port: number }).port;
  const [controllerPort, httpPort, tcpPort] = await freePorts(3);
  t.after(() => {
    squatter.close();
    rmSync(home, { recursive: true, force: true });
  });
  const env = {
    ...process.env,
    TRAJSTORE_HOME: home,
    TRAJSTORE_KAFKA_PORT: String(port),
    TRAJSTORE_KAFKA_CONTROLLER_PORT: String(controllerPort),
    TRAJSTORE_CLICKHOUSE_HTTP_PORT: String(httpPort),
    TRAJSTORE_CLICKHOUSE_TCP_PORT: String(tcpPort),
  };
  const result = spawnSync(process.execPath, ['bin/trajstore.mjs', 'services', 'up'], { env, encoding: 'utf8', timeout: 100_000 });
  assert.equal(result.status, 2);
  assert.match(result.stderr, /TRAJ_E_SERVICE_PORT_IN_USE/);
  assert.match(result.stderr, new RegExp(`port ${port} on 127\\.0\\.0\\.1 is taken`));
  assert.match(result.stderr, /TRAJSTORE_KAFKA_PORT/);
  assert.deepEqual(processesMentioning(home), [], 'nothing was left running');
});

test('a malformed port variable is refused with the variable name', () => {
  const result = spawnSync(process.execPath, ['bin/trajstore.mjs', 'services', 'status'], {
    env: { ...process.env, TRAJSTORE_KAFKA_PORT: 'ninety' },
    encoding: 'utf8',
  });
  assert.equal(result.status, 2);
  assert.match(result.stderr, /TRAJSTORE_KAFKA_PORT: expected a positive integer, got "ninety"/);
});
