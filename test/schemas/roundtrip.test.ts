import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import avro from 'avsc';
import {
  decodeDeadLetter,
  decodeMessage,
  decodePolicyVersion,
  decodeTrainerStepMetrics,
  decodeTrajectoryEvent,
  defaultCodec,
  encodeDeadLetter,
  encodePolicyVersion,
  encodeTrainerStepMetrics,
  encodeTrajectoryEvent,
  EncodeError,
  LATEST_VERSIONS,
  newTrajectoryEvent,
  payloadAs,
  payloadKind,
  type TrajectoryEvent,
} from '../../src/schemas/index.js';
import * as fx from './fixtures.js';

describe('round trip', () => {
  for (const [name, event] of Object.entries(fx.allTrajectoryEvents)) {
    test(`${name} decodes to the event that was encoded`, () => {
      const bytes = encodeTrajectoryEvent(event);
      assert.deepEqual(fx.plain(decodeTrajectoryEvent(bytes)), fx.plain(event));
    });
  }

  test('policy version decodes to the record that was encoded', () => {
    assert.deepEqual(fx.plain(decodePolicyVersion(encodePolicyVersion(fx.policyVersion))), fx.plain(fx.policyVersion));
  });

  test('trainer step metrics decode to the record that was encoded', () => {
    assert.deepEqual(fx.plain(decodeTrainerStepMetrics(encodeTrainerStepMetrics(fx.trainerStepMetrics))), fx.plain(fx.trainerStepMetrics));
  });

  test('dead letter decodes to the record that was encoded, bytes included', () => {
    const back = decodeDeadLetter(encodeDeadLetter(fx.deadLetter));
    assert.deepEqual(fx.plain(back), fx.plain(fx.deadLetter));
    assert.ok(Buffer.isBuffer(back.original_bytes));
  });

  test('every payload kind survives the trip with its kind', () => {
    for (const event of Object.values(fx.allTrajectoryEvents)) {
      assert.equal(payloadKind(decodeTrajectoryEvent(encodeTrajectoryEvent(event)).payload), payloadKind(event.payload));
    }
  });

  test('a large turn (32k prompt tokens, 4k completion tokens) round-trips exactly', () => {
    const rand = fx.prng(7);
    const ids = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * 151_936));
    const t = payloadAs(fx.turn, 'Turn')!;
    const big: TrajectoryEvent = {
      ...fx.turn,
      payload: {
        Turn: {
          ...t,
          prompt_token_ids: ids(32_768),
          completion_token_ids: ids(4_096),
          completion_logprobs: Array.from({ length: 4_096 }, () => Math.fround(-rand() * 10)),
          token_policy_versions: Array.from({ length: 4_096 }, (_, i) => (i < 2_000 ? 11 : 12)),
        },
      },
    };
    assert.deepEqual(fx.plain(decodeTrajectoryEvent(encodeTrajectoryEvent(big))), fx.plain(big));
  });
});

describe('wire format', () => {
  test('messages are single-object encoded: C3 01, the writer fingerprint, then the body', () => {
    const bytes = encodeTrajectoryEvent(fx.turn);
    assert.equal(bytes[0], 0xc3);
    assert.equal(bytes[1], 0x01);
    const latest = defaultCodec().families.get('trajectory_event')!.latest;
    assert.equal(bytes.toString('hex', 2, 10), latest.fingerprintHex);
    assert.deepEqual(fx.plain(latest.type.fromBuffer(bytes.subarray(10))), fx.plain(fx.turn));
  });

  test('the body is exactly what stock avsc writes for the schema (fast array paths change nothing)', () => {
    const latest = defaultCodec().families.get('trajectory_event')!.latest;
    const stock = avro.Type.forSchema(latest.json as avro.Schema, { wrapUnions: 'auto' });
    for (const event of Object.values(fx.allTrajectoryEvents)) {
      const ours = encodeTrajectoryEvent(event).subarray(10);
      assert.ok(stock.toBuffer(event).equals(ours), `bodies differ for ${payloadKind(event.payload)}`);
    }
    const rand = fx.prng(11);
    const ints = Array.from({ length: 3000 }, (_, i) => (i % 7 === 0 ? -(2 ** 31) + i : Math.floor(rand() * 2 ** 31) * (rand() < 0.5 ? 1 : -1)));
    const t = payloadAs(fx.turn, 'Turn')!;
    const extreme = { ...fx.turn, payload: { Turn: { ...t, prompt_token_ids: [...ints, 2 ** 31 - 1, 0, -1], token_policy_versions: null } } };
    const body = latest.type.toBuffer(extreme);
    assert.ok(stock.toBuffer(extreme).equals(body));
    assert.deepEqual(fx.plain(stock.fromBuffer(body)), fx.plain(latest.type.fromBuffer(body)));
  });

  test('decodeMessage names the family and writer version', () => {
    const m = decodeMessage(encodePolicyVersion(fx.policyVersion));
    assert.equal(m.schema, 'policy_version');
    assert.equal(m.writerVersion, 1);
    if (m.schema === 'policy_version') assert.equal(m.value.version, 12);
  });

  test('kafkajs-style Uint8Array views decode without copying surprises', () => {
    const bytes = encodeTrajectoryEvent(fx.reward);
    const padded = new Uint8Array(bytes.length + 8);
    padded.set(bytes, 4);
    const view = padded.subarray(4, 4 + bytes.length);
    assert.deepEqual(fx.plain(decodeTrajectoryEvent(view)), fx.plain(fx.reward));
  });
});

describe('encoding refuses what consumers would choke on', () => {
  const turn = payloadAs(fx.turn, 'Turn')!;

  test('a field of the wrong type is named with its path', () => {
    const bad = { ...fx.turn, payload: { Turn: { ...turn, prompt_token_ids: [1, 2.5, 3] } } };
    assert.throws(
      () => encodeTrajectoryEvent(bad),
      (e: unknown) => e instanceof EncodeError && e.code === 'TRAJ_E_ENCODE_INVALID' && e.issues.some((i) => i.path === 'payload.Turn.prompt_token_ids[1]'),
    );
  });

  test('a missing required field is named', () => {
    const { latency_ms: _dropped, ...rest } = turn;
    const bad = { ...fx.turn, payload: { Turn: rest } } as unknown as TrajectoryEvent;
    assert.throws(() => encodeTrajectoryEvent(bad), (e: unknown) => e instanceof EncodeError && e.issues.some((i) => i.path === 'payload.Turn.latency_ms'));
  });

  test('an undeclared field (a typo) is refused rather than silently dropped', () => {
    const bad = { ...fx.reward, rewrd: 1 } as unknown as TrajectoryEvent;
    assert.throws(() => encodeTrajectoryEvent(bad), /undeclared field rewrd/);
  });

  test('logprobs must pair with completion tokens one to one', () => {
    const bad = { ...fx.turn, payload: { Turn: { ...turn, completion_logprobs: turn.completion_logprobs.slice(1) } } };
    assert.throws(() => encodeTrajectoryEvent(bad), /completion_logprobs: has 4 entries for 5 completion tokens/);
  });

  test('NaN or positive logprobs are refused', () => {
    const bad = { ...fx.turn, payload: { Turn: { ...turn, completion_logprobs: [NaN, -1, -1, -1, -1] } } };
    assert.throws(() => encodeTrajectoryEvent(bad), /completion_logprobs\[0\]: NaN is not a log-probability/);
  });

  test('group-level events have no episode id and episode events have one', () => {
    assert.throws(() => encodeTrajectoryEvent({ ...fx.groupStarted, episode_id: 'ep-1' }), /episode_id: must be null for GroupStarted/);
    assert.throws(() => encodeTrajectoryEvent({ ...fx.turn, episode_id: null }), /episode_id: must be set for Turn/);
  });

  test('event ids are UUIDs and trace ids are W3C trace ids', () => {
    assert.throws(() => encodeTrajectoryEvent({ ...fx.turn, event_id: 'not-a-uuid' }), /event_id/);
    assert.throws(() => encodeTrajectoryEvent({ ...fx.turn, trace_id: 'XYZ' }), /trace_id/);
  });

  test('an observation reference carries a sha256 content hash', () => {
    const bad = { ...fx.turn, payload: { Turn: { ...turn, observation: { ...turn.observation!, sha256: 'abc' } } } };
    assert.throws(() => encodeTrajectoryEvent(bad), /observation\.sha256/);
  });

  test('prompt images need the image settings that expanded them, a content hash and real sizes', () => {
    const withTurn = (over: Partial<typeof turn>) => ({ ...fx.turn, payload: { Turn: { ...turn, ...over } } });
    assert.throws(() => encodeTrajectoryEvent(withTurn({ image_processing: null })), /payload\.Turn\.image_processing: must be set when prompt_images is not empty/);
    const image = turn.prompt_images[0]!;
    assert.throws(() => encodeTrajectoryEvent(withTurn({ prompt_images: [image, { ...image, sha256: 'A'.repeat(64) }] })), /prompt_images\[1\]\.sha256: must be 64 lower-case hex/);
    assert.throws(() => encodeTrajectoryEvent(withTurn({ prompt_images: [{ ...image, width: 0 }] })), /prompt_images\[0\]\.width: must be > 0/);
    assert.throws(() => encodeTrajectoryEvent(withTurn({ prompt_images: [{ ...image, byte_size: 0 }] })), /prompt_images\[0\]\.byte_size/);
    assert.throws(() => encodeTrajectoryEvent(withTurn({ image_processing: { ...fx.qwen3VlProcessing, patch_size: 0 } })), /image_processing\.patch_size: must be > 0/);
    assert.throws(() => encodeTrajectoryEvent(withTurn({ image_processing: { ...fx.qwen3VlProcessing, min_pixels: 2 ** 25 } })), /image_processing\.min_pixels: must be <= max_pixels/);
    // Settings without images are fine (a vision policy's text-only turn); so is neither.
    encodeTrajectoryEvent(withTurn({ prompt_images: [] }));
    encodeTrajectoryEvent(withTurn({ prompt_images: [], image_processing: null }));
  });

  test('several prompt images keep their order', () => {
    const images = ['b', 'c', 'a'].map((h, i) => ({ sha256: h.repeat(64), media_type: 'image/png', byte_size: 1000 + i, width: 640, height: 480 + i }));
    const event = { ...fx.turn, payload: { Turn: { ...turn, prompt_images: images } } };
    assert.deepEqual(fx.plain(payloadAs(decodeTrajectoryEvent(encodeTrajectoryEvent(event)), 'Turn')!.prompt_images), images);
  });

  test('a policy version checksum says its algorithm', () => {
    assert.throws(() => encodePolicyVersion({ ...fx.policyVersion, adapter_checksum: 'deadbeef' }), /adapter_checksum/);
  });

  test('messages over the size limit are refused with a hint to use the blob store', () => {
    assert.throws(
      () => encodeTrajectoryEvent(fx.turn, { maxBytes: 100 }),
      (e: unknown) => e instanceof EncodeError && e.code === 'TRAJ_E_ENCODE_TOO_LARGE' && /blob store/.test(e.hint ?? ''),
    );
  });

  test('encoding does not modify the caller’s event', () => {
    const event = { ...fx.turn, schema_version: 1 };
    encodeTrajectoryEvent(event);
    assert.equal(event.schema_version, 1);
  });
});

describe('building events', () => {
  test('newTrajectoryEvent fills id, time, schema version and envelope defaults', () => {
    const before = Date.now();
    const e = newTrajectoryEvent({
      run_id: 'r',
      group_id: 'g',
      episode_id: 'e',
      seq: 0,
      producer_id: 'p',
      policy_version: 0,
      purpose: 'train',
      payload: { EpisodeStarted: { episode_index: 0, env_seed: null, env_instance_id: null } },
    });
    assert.match(e.event_id, /^[0-9a-f-]{36}$/);
    assert.ok(e.timestamp >= before);
    assert.equal(e.schema_version, LATEST_VERSIONS.trajectory_event);
    assert.equal(e.trace_id, null);
    assert.deepEqual(e.tags, {});
    assert.deepEqual(fx.plain(decodeTrajectoryEvent(encodeTrajectoryEvent(e))), fx.plain(e));
  });

  test('schema_version is stamped with the version actually written', () => {
    assert.equal(decodeTrajectoryEvent(encodeTrajectoryEvent({ ...fx.turn, schema_version: 1 })).schema_version, LATEST_VERSIONS.trajectory_event);
    assert.equal(decodeTrajectoryEvent(encodeTrajectoryEvent(fx.turn, { writerVersion: 1 })).schema_version, 1);
    assert.equal(decodeTrajectoryEvent(encodeTrajectoryEvent(fx.turn, { writerVersion: 2 })).schema_version, 2);
  });

  test('payloadAs narrows to the payload of one kind', () => {
    assert.equal(payloadAs(fx.turn, 'Turn')?.turn_index, 1);
    assert.equal(payloadAs(fx.turn, 'Reward'), undefined);
  });
});

describe('decoded values are independent', () => {
  test('map defaults filled in for old events are not shared between events', () => {
    const v1 = encodeTrajectoryEvent(fx.turn, { writerVersion: 1 });
    const a = decodeTrajectoryEvent(v1);
    const b = decodeTrajectoryEvent(v1);
    a.tags.mutated = 'yes';
    assert.deepEqual(b.tags, {});
  });

  test('array defaults filled in for old events are not shared between events', () => {
    const v2 = encodeTrajectoryEvent(fx.turn, { writerVersion: 2 });
    const a = payloadAs(decodeTrajectoryEvent(v2), 'Turn')!;
    const b = payloadAs(decodeTrajectoryEvent(v2), 'Turn')!;
    a.prompt_images.push(payloadAs(fx.turn, 'Turn')!.prompt_images[0]!);
    assert.deepEqual(b.prompt_images, []);
  });

  test('a "__proto__" map key stays data and does not change the object’s prototype', () => {
    const codec = defaultCodec();
    const latest = codec.families.get('trajectory_event')!.latest;
    // Hand-encode a tags map holding a __proto__ key (the encoder's own validation would not
    // produce one from an object literal).
    const body = Buffer.from(latest.type.toBuffer({ ...fx.reward, tags: { zzzzzzzzz: 'x' } }));
    const at = body.indexOf(Buffer.from('zzzzzzzzz'));
    body.write('__proto__', at, 'latin1');
    const message = Buffer.concat([Buffer.from([0xc3, 0x01]), latest.fingerprint, body]);
    const event = decodeTrajectoryEvent(message);
    assert.equal(Object.getPrototypeOf(event.tags), Object.prototype);
    assert.deepEqual(Object.keys(event.tags), ['__proto__']);
    assert.equal(Object.getOwnPropertyDescriptor(event.tags, '__proto__')?.value, 'x');
  });
});
