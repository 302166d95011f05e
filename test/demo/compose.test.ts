/**
 * infra/docker-compose.yml, checked without a Docker engine (none on these machines): its
 * structure (services, healthchecks, startup order, volumes, GPU reservations, profiles), that
 * every `trajstore` command in it uses flags the CLI really has, that its TRAJSTORE__ variables
 * name real config fields, and that Debian's `docker-compose config` accepts it (`.ci/run`
 * installs docker-compose; elsewhere `apt-get install docker-compose`). The stack itself
 * was never started here.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Command } from 'commander';
import { parse } from 'yaml';
import { buildProgram } from '../../src/cli/main.js';
import { loadConfig, parseConfig } from '../../src/config/index.js';
import { projectRoot } from '../../src/services/paths.js';

const root = projectRoot();
const composeFile = join(root, 'infra', 'docker-compose.yml');
type Service = {
  image?: string; build?: { context: string; dockerfile: string }; profiles?: string[]; command?: string | string[];
  environment?: Record<string, string | number>; healthcheck?: { test: string[] }; volumes?: string[];
  depends_on?: Record<string, { condition: string }>; networks?: { default?: { aliases?: string[] } };
  deploy?: { replicas?: unknown; resources?: { reservations?: { devices?: Array<{ driver: string; device_ids?: string[]; capabilities: string[] }> } } };
};
const compose = parse(readFileSync(composeFile, 'utf8'), { merge: true }) as { services: Record<string, Service>; volumes: Record<string, unknown> };
const services = compose.services;

test('the stack has every role, and the cpu profile swaps vLLM and the GPU trainer for CPU ones', () => {
  assert.deepEqual(Object.keys(services).sort(), ['api', 'clickhouse', 'kafka', 'policy-cpu', 'producer', 'sink', 'trainer', 'trainer-cpu', 'vllm']);
  assert.deepEqual(services.vllm!.profiles, ['gpu']);
  assert.deepEqual(services.trainer!.profiles, ['gpu']);
  assert.deepEqual(services['policy-cpu']!.profiles, ['cpu']);
  assert.deepEqual(services['trainer-cpu']!.profiles, ['cpu']);
  for (const name of ['kafka', 'clickhouse', 'producer', 'sink', 'api']) assert.equal(services[name]!.profiles, undefined, `${name} runs in every profile`);
  // Both policy servers answer as `policy`, the name producers and the trainer use.
  assert.deepEqual(services.vllm!.networks?.default?.aliases, ['policy']);
  assert.deepEqual(services['policy-cpu']!.networks?.default?.aliases, ['policy']);
  assert.match(services.kafka!.image!, /^\$\{KAFKA_IMAGE:-apache\/kafka:/);
  assert.match(services.clickhouse!.image!, /^\$\{CLICKHOUSE_IMAGE:-clickhouse\/clickhouse-server:/);
  assert.match(services.vllm!.image!, /^\$\{VLLM_IMAGE:-vllm\/vllm-openai:/);
});

test('Kafka runs KRaft (combined broker and controller, no ZooKeeper)', () => {
  const env = services.kafka!.environment!;
  assert.equal(env.KAFKA_PROCESS_ROLES, 'broker,controller');
  assert.equal(env.KAFKA_CONTROLLER_QUORUM_VOTERS, '1@kafka:9093');
  assert.ok(!Object.keys(env).some((k) => /ZOOKEEPER/.test(k)));
});

test('vLLM serves LoRA adapters that can be loaded at runtime; model and tensor parallel size come from .env', () => {
  const vllm = services.vllm!;
  assert.equal(vllm.environment!.VLLM_ALLOW_RUNTIME_LORA_UPDATING, 'True');
  const args = vllm.command as string[];
  assert.ok(args.includes('--enable-lora'));
  assert.ok(args.some((a) => /^--max-loras=\$\{VLLM_MAX_LORAS:-\d+\}$/.test(a)));
  assert.ok(args.some((a) => /^--model=\$\{MODEL_NAME:-Qwen\/Qwen3-VL-32B-Instruct\}$/.test(a)));
  assert.ok(args.some((a) => /^--tensor-parallel-size=\$\{VLLM_TENSOR_PARALLEL_SIZE:-\d+\}$/.test(a)));
  // The trainer writes adapters where vLLM reads them: same volume, same path.
  assert.ok(vllm.volumes!.includes('adapters:/data/adapters:ro'));
  assert.ok(services.trainer!.volumes!.includes('adapters:/data/adapters'));
  assert.equal(services.trainer!.environment!.TRAJSTORE__STORAGE__ADAPTERS, '/data/adapters');
});

test('GPUs are reserved for vLLM and the trainer only', () => {
  for (const name of Object.keys(services)) {
    const devices = services[name]!.deploy?.resources?.reservations?.devices;
    if (name === 'vllm' || name === 'trainer') {
      assert.equal(devices?.length, 1, `${name} reserves GPUs`);
      assert.equal(devices![0]!.driver, 'nvidia');
      assert.deepEqual(devices![0]!.capabilities, ['gpu']);
      assert.match(devices![0]!.device_ids![0]!, /^\$\{(VLLM|TRAINER)_GPUS:-[\d,]+\}$/);
    } else {
      assert.equal(devices, undefined, `${name} reserves no GPU`);
    }
  }
});

test('healthchecks and startup order: roles start after Kafka and ClickHouse are healthy', () => {
  for (const name of ['kafka', 'clickhouse', 'vllm', 'policy-cpu', 'api']) assert.ok(services[name]!.healthcheck?.test, `${name} has a healthcheck`);
  const healthy = { condition: 'service_healthy' };
  for (const name of ['trainer', 'trainer-cpu', 'sink', 'api']) {
    assert.deepEqual(services[name]!.depends_on?.kafka, healthy, `${name} waits for Kafka`);
    assert.deepEqual(services[name]!.depends_on?.clickhouse, healthy, `${name} waits for ClickHouse`);
  }
  assert.deepEqual(services.producer!.depends_on?.kafka, healthy);
  // The policy server is in one profile or the other, so roles wait for it in their command.
  for (const name of ['trainer', 'trainer-cpu', 'producer']) assert.match(commandText(services[name]!), /until curl -sf http:\/\/policy:8000\/health/);
});

test('named volumes hold Kafka, ClickHouse, adapters and blobs', () => {
  for (const v of ['kafka-data', 'clickhouse-data', 'adapters', 'blobs']) assert.ok(v in compose.volumes, `volume ${v}`);
  assert.ok(services.kafka!.volumes!.includes('kafka-data:/var/lib/kafka/data'));
  assert.ok(services.clickhouse!.volumes!.includes('clickhouse-data:/var/lib/clickhouse'));
  assert.ok(services.producer!.volumes!.includes('blobs:/data/blobs'));
  assert.ok(services.trainer!.volumes!.includes('blobs:/data/blobs:ro'), 'the trainer (vision runs) reads the screenshots the producers store');
});

test('producers scale: replicas from .env, and staleness pacing is told how many there are', () => {
  const producer = services.producer!;
  assert.equal(producer.deploy!.replicas, '${PRODUCER_REPLICAS:-2}');
  assert.equal(producer.environment!.TRAJSTORE__ROLLOUT__NUM_PRODUCERS, '${PRODUCER_REPLICAS:-2}');
});

/** The shell text of a service's command. */
function commandText(s: Service): string {
  return Array.isArray(s.command) ? s.command.join(' ') : (s.command ?? '');
}

/** `trajstore <sub> ...args` out of a service's command, args up to the end of the line or `;`. */
function trajstoreInvocation(s: Service): { sub: string; flags: string[] } | undefined {
  const m = /\btrajstore (\w+)([^;]*)/.exec(commandText(s));
  if (!m) return undefined;
  return { sub: m[1]!, flags: m[2]!.split(/\s+/).filter((a) => a.startsWith('-')) };
}

test("every trajstore command in the stack uses the CLI's real subcommands and flags", (t) => {
  const program = buildProgram();
  const roles: Record<string, string> = { trainer: 'train', 'trainer-cpu': 'train', producer: 'rollout', sink: 'sink', api: 'api' };
  for (const [service, sub] of Object.entries(roles)) {
    const call = trajstoreInvocation(services[service]!);
    assert.equal(call?.sub, sub, `${service} runs trajstore ${sub}`);
    const command = program.commands.find((c: Command) => c.name() === sub);
    if (!command) {
      // `trajstore api` lands with the API issue; until then only its name is pinned here.
      t.diagnostic(`trajstore ${sub} is not registered in src/cli/main.ts yet: flags of service ${service} not checked`);
      continue;
    }
    const known = new Set(command.options.flatMap((o) => [o.long, o.short].filter(Boolean) as string[]));
    for (const flag of call!.flags) assert.ok(known.has(flag), `${service}: trajstore ${sub} has no ${flag} (it has ${[...known].join(' ')})`);
  }
});

test('the TRAJSTORE__ variables of the stack name real config fields and reach them', () => {
  for (const [service, config] of [['trainer', 'configs/cua_grpo.yaml'], ['trainer-cpu', 'configs/demo.yaml'], ['producer', 'configs/cua_grpo.yaml'], ['sink', 'configs/cua_grpo.yaml']] as const) {
    // Compose would substitute ${VAR:-default}; the defaults are what a fresh .env gives.
    const env = Object.fromEntries(Object.entries(services[service]!.environment!).map(([k, v]) => [k, String(v).replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1')]));
    const c = parseConfig(readFileSync(join(root, config), 'utf8'), `${config} under ${service}`, env);
    assert.deepEqual(c.kafka.brokers, ['kafka:9092']);
    assert.equal(c.clickhouse.url, 'http://clickhouse:8123');
    assert.deepEqual(c.inference.api_bases, ['http://policy:8000/v1']);
    assert.equal(c.storage.adapters, '/data/adapters');
    assert.equal(c.checkpoint.dir, '/data/outputs/checkpoints');
    if (service === 'trainer-cpu') assert.equal(c.model.path, '/data/models/demo-tiny-x8');
    if (service === 'trainer') assert.equal(c.training.num_gpus, 4, 'FSDP across the four reserved GPUs of plan A');
  }
});

test('Dockerfiles build from the registries alone', () => {
  const node = readFileSync(join(root, 'infra', 'docker', 'node.Dockerfile'), 'utf8');
  const trainer = readFileSync(join(root, 'infra', 'docker', 'trainer.Dockerfile'), 'utf8');
  assert.match(node, /^FROM node:20/m);
  assert.match(node, /npm ci/);
  assert.match(trainer, /^FROM python:3\.11/m);
  assert.match(trainer, /pip install .*-r engine\/requirements\.txt/);
  for (const name of ['producer', 'sink', 'api']) assert.equal(services[name]!.build?.dockerfile, 'infra/docker/node.Dockerfile');
  for (const name of ['trainer', 'trainer-cpu', 'policy-cpu']) assert.equal(services[name]!.build?.dockerfile, 'infra/docker/trainer.Dockerfile');
});

test('docker compose from the repository root includes the stack', () => {
  const rootCompose = parse(readFileSync(join(root, 'compose.yaml'), 'utf8')) as { include: Array<{ path: string }> };
  assert.deepEqual(rootCompose.include.map((i) => i.path), ['infra/docker-compose.yml']);
});

test('env.example names the keys of the seeds and every variable the GPU plan needs', () => {
  const text = readFileSync(join(root, 'infra', 'env.example'), 'utf8');
  for (const v of ['GBOX_API_KEY', 'HF_TOKEN', 'HF_ENDPOINT', 'MODEL_NAME', 'COMPOSE_PROFILES', 'VLLM_GPUS', 'TRAINER_GPUS', 'VLLM_TENSOR_PARALLEL_SIZE', 'PRODUCER_REPLICAS']) {
    assert.match(text, new RegExp(`^${v}=`, 'm'), `env.example sets ${v}`);
  }
});

test("Debian's docker-compose accepts the file (docker-compose config)", () => {
  const probe = spawnSync('docker-compose', ['version'], { encoding: 'utf8' });
  assert.ok(!probe.error && probe.status === 0, 'docker-compose is not installed: apt-get install docker-compose (.ci/run installs it)');
  for (const profiles of ['gpu', 'cpu']) {
    const run = spawnSync('docker-compose', ['-f', composeFile, '--env-file', join(root, 'infra', 'env.example'), 'config', '-q'], {
      encoding: 'utf8', env: { ...process.env, COMPOSE_PROFILES: profiles },
    });
    assert.equal(run.status, 0, `docker-compose config (${profiles}): ${run.stderr}`);
  }
});

test("configs/cua_grpo.yaml reproduces the seeds' setup and validates", () => {
  const c = loadConfig(join(root, 'configs', 'cua_grpo.yaml'), {});
  assert.equal(c.model.name, 'Qwen/Qwen3-VL-32B-Instruct');
  assert.equal(c.lora.r, 16);
  assert.equal(c.lora.alpha, 32);
  assert.equal(c.training.learning_rate, 1e-5);
  assert.equal(c.rollout.num_rollouts, 4);
  assert.equal(c.rollout.max_turns, 15);
  assert.deepEqual(c.inference.api_bases, ['http://localhost:8000/v1']);
});
