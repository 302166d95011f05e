import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  checkSchemas,
  encodePolicyVersion,
  generateTypes,
  loadSchemaDir,
  lockSchemas,
  SCHEMA_DIR,
  type SchemaCheckIssue,
} from '../../src/schemas/index.js';
import * as fx from './fixtures.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const HARNESS = fileURLToPath(new URL('./cli-harness.ts', import.meta.url));

/** A scratch copy of the shipped schema directory (schemas, lockfile, generated types). */
function scratch(): string {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-schemas-'));
  cpSync(SCHEMA_DIR, dir, {
    recursive: true,
    filter: (src) => !src.endsWith('.ts') || src.endsWith('types.generated.ts'),
  });
  return dir;
}

type Json = { fields: Array<Record<string, unknown>>; [k: string]: unknown };

function readSchema(dir: string, family: string, version: number): Json {
  return JSON.parse(readFileSync(join(dir, family, `v${version}.avsc`), 'utf8')) as Json;
}

function writeSchema(dir: string, family: string, version: number, schema: unknown): void {
  writeFileSync(join(dir, family, `v${version}.avsc`), JSON.stringify(schema, null, 2));
}

/** The newest shipped version of trajectory_event, and the next one the tests below make. */
const LATEST = 3;
const NEXT = LATEST + 1;

/** A next version (v4) of trajectory_event made from the newest shipped one (v3) by `change`. */
function withNext(change: (next: Json) => void): string {
  const dir = scratch();
  const next = readSchema(dir, 'trajectory_event', LATEST);
  change(next);
  writeSchema(dir, 'trajectory_event', NEXT, next);
  return dir;
}

function only(issues: SchemaCheckIssue[], code: string): SchemaCheckIssue[] {
  return issues.filter((i) => i.code === code);
}

function turnFields(v: Json): Array<Record<string, unknown>> {
  const payload = v.fields.find((f) => f.name === 'payload')!.type as Array<{ name: string; fields: Array<Record<string, unknown>> }>;
  return payload.find((r) => r.name === 'Turn')!.fields;
}

function cli(...args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', HARNESS, 'schemas', ...args], { cwd: REPO, encoding: 'utf8' });
}

describe('schemas check', () => {
  test('the shipped schemas pass: compatible, pinned, types current', () => {
    const report = checkSchemas();
    assert.deepEqual(report.issues, []);
    assert.ok(report.ok);
    assert.ok(report.versions.some((v) => v.schema === 'trajectory_event' && v.version === LATEST && v.latest));
  });

  test('types.generated.ts is what codegen produces from the shipped schemas', () => {
    assert.equal(readFileSync(join(SCHEMA_DIR, 'types.generated.ts'), 'utf8'), generateTypes(loadSchemaDir()));
  });

  test('a field added without a default is caught, naming schema, version and field', () => {
    const dir = withNext((next) => next.fields.splice(3, 0, { name: 'attempt', type: 'int' }));
    const issues = only(checkSchemas(dir).issues, 'TRAJ_E_SCHEMA_INCOMPATIBLE');
    assert.equal(issues.length, 1, JSON.stringify(issues));
    assert.equal(issues[0]!.schema, 'trajectory_event');
    assert.equal(issues[0]!.version, NEXT);
    assert.equal(issues[0]!.field, 'attempt');
    assert.match(issues[0]!.message, new RegExp(`trajectory_event v${NEXT} cannot read data written with v${LATEST}: field attempt: .*without a default`));
  });

  test('a type change deep in the payload is caught with its path', () => {
    const dir = withNext((next) => {
      const latency = turnFields(next).find((f) => f.name === 'latency_ms')!;
      latency.type = 'string';
    });
    const [issue] = only(checkSchemas(dir).issues, 'TRAJ_E_SCHEMA_INCOMPATIBLE');
    assert.equal(issue?.field, 'payload.Turn.latency_ms');
    assert.match(issue!.message, /reader type string cannot read writer type int/);
  });

  test('a removed enum symbol is caught', () => {
    const dir = withNext((next) => {
      const purpose = next.fields.find((f) => f.name === 'purpose')!;
      (purpose.type as { symbols: string[] }).symbols = ['train'];
    });
    const [issue] = only(checkSchemas(dir).issues, 'TRAJ_E_SCHEMA_INCOMPATIBLE');
    assert.equal(issue?.field, 'purpose');
    assert.match(issue!.message, /lost symbol\(s\) eval/);
  });

  test('a removed payload kind is caught', () => {
    const dir = withNext((next) => {
      const payload = next.fields.find((f) => f.name === 'payload')!;
      payload.type = (payload.type as Array<{ name: string }>).filter((r) => r.name !== 'Reward');
    });
    const [issue] = only(checkSchemas(dir).issues, 'TRAJ_E_SCHEMA_INCOMPATIBLE');
    assert.equal(issue?.field, 'payload.Reward');
  });

  test('compatible changes pass once pinned and regenerated: a defaulted field, a promotion, a removed field', () => {
    const dir = withNext((next) => {
      next.fields.splice(3, 0, { name: 'attempt', type: 'int', default: 0 });
      turnFields(next).find((f) => f.name === 'latency_ms')!.type = 'long'; // int -> long promotes
      const i = turnFields(next).findIndex((f) => f.name === 'request_id');
      turnFields(next).splice(i, 1); // readers may drop fields
    });
    const before = checkSchemas(dir);
    assert.deepEqual(
      before.issues.map((i) => i.code).sort(),
      ['TRAJ_E_SCHEMA_TYPES_STALE', 'TRAJ_E_SCHEMA_UNPINNED'],
      JSON.stringify(before.issues),
    );
    const { added } = lockSchemas(dir);
    assert.deepEqual(added, [`trajectory_event v${NEXT}`]);
    writeFileSync(join(dir, 'types.generated.ts'), generateTypes(loadSchemaDir(dir)));
    assert.deepEqual(checkSchemas(dir).issues, []);
  });

  test('editing a shipped version in place is caught, even when only a default changes', () => {
    const dir = scratch();
    const v1 = readSchema(dir, 'policy_version', 1);
    v1.fields.push({ name: 'notes', type: ['null', 'string'], default: null });
    writeSchema(dir, 'policy_version', 1, v1);
    const [edited] = only(checkSchemas(dir).issues, 'TRAJ_E_SCHEMA_MODIFIED');
    assert.equal(edited?.schema, 'policy_version');
    assert.equal(edited?.version, 1);
    assert.match(edited!.message, /edited in place: fingerprint/);

    // A changed default leaves the fingerprint alone (Parsing Canonical Form drops defaults) but
    // changes how every old message missing the field reads: the content hash catches it.
    const dir2 = scratch();
    const v2 = readSchema(dir2, 'trajectory_event', 2);
    v2.fields.find((f) => f.name === 'tags')!.default = { source: 'legacy' };
    writeSchema(dir2, 'trajectory_event', 2, v2);
    const [redefaulted] = only(checkSchemas(dir2).issues, 'TRAJ_E_SCHEMA_MODIFIED');
    assert.equal(redefaulted?.schema, 'trajectory_event');
    assert.equal(redefaulted?.version, 2);
    assert.match(redefaulted!.message, /same fingerprint, but its docs, defaults/);
  });

  test('deleting a pinned version is caught', () => {
    const dir = scratch();
    rmSync(join(dir, 'trajectory_event', 'v1.avsc'));
    const issues = checkSchemas(dir).issues;
    assert.ok(issues.some((i) => i.code === 'TRAJ_E_SCHEMA_MISSING' || (i.code === 'TRAJ_E_SCHEMA_INVALID' && /v1 is missing/.test(i.message))), JSON.stringify(issues));
  });

  test('a version that changes nothing on the wire is refused (fingerprints must differ)', () => {
    const dir = withNext((next) => {
      next.doc = 'only the doc changed';
    });
    assert.ok(only(checkSchemas(dir).issues, 'TRAJ_E_SCHEMA_DUPLICATE').length === 1);
  });

  test('lock refuses to pin while a version is incompatible, and never rewrites a pin', () => {
    const dir = withNext((next) => next.fields.splice(3, 0, { name: 'attempt', type: 'int' }));
    const before = readFileSync(join(dir, 'fingerprints.json'), 'utf8');
    const { added, report } = lockSchemas(dir);
    assert.deepEqual(added, []);
    assert.ok(report.issues.some((i) => i.code === 'TRAJ_E_SCHEMA_INCOMPATIBLE'));
    assert.equal(readFileSync(join(dir, 'fingerprints.json'), 'utf8'), before);
  });

  test('stale generated types are caught', () => {
    const dir = scratch();
    writeFileSync(join(dir, 'types.generated.ts'), '// hand-edited\n');
    assert.equal(only(checkSchemas(dir).issues, 'TRAJ_E_SCHEMA_TYPES_STALE').length, 1);
  });
});

describe('trajstore schemas (CLI)', () => {
  test('`schemas check` exits 0 on the shipped schemas', () => {
    const r = cli('check');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /schemas ok/);
  });

  test('`schemas check` exits non-zero naming the schema, version and field of an incompatible change', () => {
    const dir = withNext((next) => {
      turnFields(next).find((f) => f.name === 'latency_ms')!.type = 'string';
    });
    const r = cli('check', '--dir', dir);
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`TRAJ_E_SCHEMA_INCOMPATIBLE \\[trajectory_event v${NEXT} payload\\.Turn\\.latency_ms\\]`));
  });

  test('`schemas decode --hex` prints a message as JSON', () => {
    const r = cli('decode', '--hex', encodePolicyVersion(fx.policyVersion).toString('hex'));
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { schema: string; writerVersion: number; value: { version: number } };
    assert.equal(out.schema, 'policy_version');
    assert.equal(out.value.version, 12);
  });

  test('`schemas decode` of an unknown message reports the typed error and exits 2', () => {
    const r = cli('decode', '--hex', 'c301' + '00'.repeat(8));
    assert.equal(r.status, 2);
    assert.match(r.stderr, /TRAJ_E_DECODE_UNKNOWN_SCHEMA/);
  });
});
