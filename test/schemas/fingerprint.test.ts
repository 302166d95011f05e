import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import avro from 'avsc';
import { defaultCodec, fingerprintHex, fingerprintToLong, parsingCanonicalForm, SCHEMA_DIR, schemaFingerprint } from '../../src/schemas/index.js';

// From the Avro project's share/test/data/schema-tests.txt (fingerprints as Java's signed longs).
const AVRO_VECTORS: Array<[unknown, string, string]> = [
  ['null', '"null"', '7195948357588979594'],
  [{ type: 'int' }, '"int"', '8247732601305521295'],
  ['string', '"string"', '-8142146995180207161'],
  [[], '[]', '-1241056759729112623'],
  [['int', { type: 'boolean' }], '["int","boolean"]', '5392556393470105090'],
  [{ fields: [], type: 'record', name: 'foo', namespace: 'x.y' }, '{"name":"x.y.foo","type":"record","fields":[]}', '5916914534497305771'],
  [{ fields: [], type: 'record', name: 'a.b.foo', namespace: 'x.y' }, '{"name":"a.b.foo","type":"record","fields":[]}', '-4616218487480524110'],
  [
    {
      fields: [
        { type: 'boolean', aliases: [], name: 'f1', default: 'true' },
        { order: 'descending', name: 'f2', doc: 'Hello', type: 'int' },
      ],
      type: 'record',
      name: 'foo',
    },
    '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
    '-4860222112080293046',
  ],
  [{ namespace: 'x.y.z', type: 'enum', name: 'foo', doc: 'foo bar', symbols: ['A1', 'A2'] }, '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}', '-4448647247586288245'],
  [{ namespace: 'x.y.z', type: 'fixed', name: 'foo', doc: 'foo bar', size: 32 }, '{"name":"x.y.z.foo","type":"fixed","size":32}', '-3064184465700546786'],
  [{ items: { type: 'null' }, type: 'array' }, '{"type":"array","items":"null"}', '-589620603366471059'],
  [{ values: 'string', type: 'map' }, '{"type":"map","values":"string"}', '-8732877298790414990'],
  [
    { name: 'PigValue', type: 'record', fields: [{ name: 'value', type: ['null', 'int', 'long', 'PigValue'] }] },
    '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
    '-1759257747318642341',
  ],
];

describe('fingerprints', () => {
  for (const [schema, canonical, fingerprint] of AVRO_VECTORS) {
    test(`Parsing Canonical Form and CRC-64-AVRO match the Avro spec vectors: ${canonical.slice(0, 40)}`, () => {
      assert.equal(parsingCanonicalForm(schema), canonical);
      assert.equal(fingerprintToLong(fingerprintHex(schemaFingerprint(schema))).toString(), fingerprint);
    });
  }

  test('the single-object header of "int" is the one other Avro implementations write', () => {
    // Avro Ruby's test_single_object_encoding_header: C3 01 8F 5C 39 3F 1A D5 75 72.
    assert.equal(fingerprintHex(schemaFingerprint('int')), '8f5c393f1ad57572');
  });

  test('our canonical form of every shipped schema equals avsc’s canonical schema', () => {
    for (const family of defaultCodec().families.values()) {
      for (const v of family.versions) {
        const avscCanonical = JSON.stringify(avro.Type.forSchema(v.json as avro.Schema, { wrapUnions: 'auto' }).schema());
        assert.equal(v.canonical, avscCanonical, `${family.name} v${v.version}`);
      }
    }
  });

  test('fingerprints.json pins exactly the fingerprints computed from the files', () => {
    const lock = JSON.parse(readFileSync(join(SCHEMA_DIR, 'fingerprints.json'), 'utf8')) as {
      schemas: Record<string, Record<string, { fingerprint: string; content_sha256: string }>>;
    };
    for (const family of defaultCodec().families.values()) {
      for (const v of family.versions) {
        assert.deepEqual(lock.schemas[family.name]?.[`v${v.version}`], { fingerprint: v.fingerprintHex, content_sha256: v.contentSha256 });
      }
    }
  });
});
