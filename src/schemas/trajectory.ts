import { randomUUID } from 'node:crypto';
import type { EncodeIssue } from './errors.js';
import { LATEST_VERSIONS, type PolicyVersion, type TrajectoryEvent, type TrajectoryEventPayload, type Turn } from './types.generated.js';

/** Helpers around trajectory events: what kind a payload is, building one, and its invariants. */

/** The branch names of the payload union. */
export type PayloadKind = TrajectoryEventPayload extends infer U ? (U extends unknown ? keyof U : never) : never;

/** The payload type for a kind, e.g. `PayloadOf<'Turn'>` is `Turn`. */
export type PayloadOf<K extends PayloadKind> = Extract<TrajectoryEventPayload, Record<K, unknown>>[K];

/** Payload kinds that belong to the group rather than to an episode (their episode_id is null). */
export const GROUP_LEVEL_KINDS: ReadonlySet<PayloadKind> = new Set<PayloadKind>(['GroupStarted', 'GroupCompleted']);

/** Which kind of payload an event carries. */
export function payloadKind(payload: TrajectoryEventPayload): PayloadKind {
  for (const key in payload) return key as PayloadKind;
  throw new TypeError('empty payload');
}

/** The event's payload if it is of `kind`, else undefined: `const turn = payloadAs(ev, 'Turn')`. */
export function payloadAs<K extends PayloadKind>(event: { payload: TrajectoryEventPayload }, kind: K): PayloadOf<K> | undefined {
  return (event.payload as unknown as Partial<Record<K, PayloadOf<K>>>)[kind];
}

/** Envelope fields a producer must supply; the rest get defaults. */
export type NewTrajectoryEvent = Pick<TrajectoryEvent, 'run_id' | 'group_id' | 'seq' | 'producer_id' | 'policy_version' | 'purpose' | 'payload'> &
  Partial<Pick<TrajectoryEvent, 'event_id' | 'episode_id' | 'timestamp' | 'trace_id' | 'tags'>>;

/**
 * Builds an event with a fresh UUID, the current time, the newest schema version, no trace id
 * and no tags, unless given.
 */
export function newTrajectoryEvent(fields: NewTrajectoryEvent): TrajectoryEvent {
  return {
    event_id: fields.event_id ?? randomUUID(),
    run_id: fields.run_id,
    group_id: fields.group_id,
    episode_id: fields.episode_id ?? null,
    seq: fields.seq,
    timestamp: fields.timestamp ?? Date.now(),
    producer_id: fields.producer_id,
    schema_version: LATEST_VERSIONS.trajectory_event,
    policy_version: fields.policy_version,
    purpose: fields.purpose,
    trace_id: fields.trace_id ?? null,
    tags: fields.tags ?? {},
    payload: fields.payload,
  };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const TRACE_ID = /^[0-9a-f]{32}$/;

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/**
 * Invariants an event must hold beyond its Avro shape, the ones consumers rely on: the trainer
 * pairs every completion token with a logprob, finds group-level events by their null episode,
 * and never sees NaN. Returns the problems (empty: fine). The encoder refuses events with any,
 * so nothing that breaks them reaches the log; decoders do not re-check (old events are what
 * they are).
 */
export function checkTrajectoryEvent(event: TrajectoryEvent): EncodeIssue[] {
  const issues: EncodeIssue[] = [];
  const bad = (path: string, message: string) => issues.push({ path, message });
  if (!UUID.test(event.event_id)) bad('event_id', `${JSON.stringify(event.event_id)} is not a UUID`);
  for (const f of ['run_id', 'group_id', 'producer_id'] as const) if (event[f] === '') bad(f, 'must not be empty');
  if (event.seq < 0) bad('seq', 'must be >= 0');
  if (event.timestamp <= 0) bad('timestamp', 'must be milliseconds since the epoch');
  if (event.policy_version < 0) bad('policy_version', 'must be >= 0 (0 = base model)');
  if (event.schema_version < 1 || event.schema_version > LATEST_VERSIONS.trajectory_event) {
    bad('schema_version', `must be 1..${LATEST_VERSIONS.trajectory_event}`);
  }
  if (event.trace_id !== null && event.trace_id !== undefined && !TRACE_ID.test(event.trace_id)) {
    bad('trace_id', 'must be 32 lower-case hex characters (W3C trace id)');
  }
  const kind = payloadKind(event.payload);
  if (GROUP_LEVEL_KINDS.has(kind) !== (event.episode_id === null)) {
    bad('episode_id', GROUP_LEVEL_KINDS.has(kind) ? `must be null for ${kind}` : `must be set for ${kind}`);
  }
  const at = `payload.${kind}`;
  const p = event.payload;
  if ('GroupStarted' in p) {
    const g = p.GroupStarted;
    if (g.group_size < 1) bad(`${at}.group_size`, 'must be >= 1');
    if (!isJson(g.task.params_json)) bad(`${at}.task.params_json`, 'is not valid JSON');
    if (g.sampling.extra_json !== null && !isJson(g.sampling.extra_json)) bad(`${at}.sampling.extra_json`, 'is not valid JSON');
  } else if ('Turn' in p) {
    const t = p.Turn;
    const n = t.completion_token_ids.length;
    if (t.turn_index < 0) bad(`${at}.turn_index`, 'must be >= 0');
    if (t.completion_logprobs.length !== n) {
      bad(`${at}.completion_logprobs`, `has ${t.completion_logprobs.length} entries for ${n} completion tokens`);
    }
    if (t.token_policy_versions !== null && t.token_policy_versions.length !== n) {
      bad(`${at}.token_policy_versions`, `has ${t.token_policy_versions.length} entries for ${n} completion tokens`);
    }
    for (const [field, ids] of [['prompt_token_ids', t.prompt_token_ids], ['completion_token_ids', t.completion_token_ids]] as const) {
      for (let i = 0; i < ids.length; i++) {
        if (ids[i]! < 0) {
          bad(`${at}.${field}[${i}]`, 'token ids are >= 0');
          break;
        }
      }
    }
    for (let i = 0; i < t.completion_logprobs.length; i++) {
      const lp = t.completion_logprobs[i]!;
      if (Number.isNaN(lp) || lp > 1e-3) {
        bad(`${at}.completion_logprobs[${i}]`, `${lp} is not a log-probability`);
        break;
      }
    }
    if (t.action !== null && !isJson(t.action.args_json)) bad(`${at}.action.args_json`, 'is not valid JSON');
    if (t.observation !== null) checkObservation(t.observation, `${at}.observation`, bad);
    checkPromptImages(t, at, bad);
  } else if ('Reward' in p) {
    if (!Number.isFinite(p.Reward.value)) bad(`${at}.value`, 'must be finite');
  } else if ('EpisodeFinished' in p) {
    const f = p.EpisodeFinished;
    if (f.final_observation !== null) checkObservation(f.final_observation, `${at}.final_observation`, bad);
  }
  return issues;
}

function checkObservation(o: { sha256: string; byte_size: number }, path: string, bad: (path: string, message: string) => void): void {
  if (!SHA256_HEX.test(o.sha256)) bad(`${path}.sha256`, 'must be 64 lower-case hex characters');
  if (o.byte_size < 0) bad(`${path}.byte_size`, 'must be >= 0');
}

/**
 * Since v3: the images of a Turn's prompt and the processor settings that turned them into
 * placeholder tokens. The trainer rebuilds the exact multimodal prompt from these, so an image
 * without settings (or settings that cannot describe a resize) is refused here, at the source.
 */
function checkPromptImages(t: Turn, at: string, bad: (path: string, message: string) => void): void {
  t.prompt_images.forEach((img, i) => {
    const path = `${at}.prompt_images[${i}]`;
    if (!SHA256_HEX.test(img.sha256)) bad(`${path}.sha256`, 'must be 64 lower-case hex characters');
    if (img.media_type === '') bad(`${path}.media_type`, 'must not be empty');
    if (img.byte_size <= 0) bad(`${path}.byte_size`, 'must be > 0');
    if (img.width <= 0) bad(`${path}.width`, 'must be > 0');
    if (img.height <= 0) bad(`${path}.height`, 'must be > 0');
  });
  const ip = t.image_processing;
  if (t.prompt_images.length > 0 && ip === null) {
    bad(`${at}.image_processing`, 'must be set when prompt_images is not empty (the settings that expanded the images into tokens)');
  }
  if (ip === null) return;
  const path = `${at}.image_processing`;
  if (ip.processor === '') bad(`${path}.processor`, 'must not be empty');
  if (ip.processor_version === '') bad(`${path}.processor_version`, 'must not be empty');
  for (const f of ['min_pixels', 'max_pixels', 'patch_size', 'merge_size', 'temporal_patch_size'] as const) {
    if (ip[f] <= 0) bad(`${path}.${f}`, 'must be > 0');
  }
  if (ip.min_pixels > ip.max_pixels) bad(`${path}.min_pixels`, `must be <= max_pixels (${ip.max_pixels})`);
}

const CHECKSUM = /^sha256:[0-9a-f]{64}$/;

/** Invariants of a PolicyVersion record (see checkTrajectoryEvent for why). */
export function checkPolicyVersion(pv: PolicyVersion): EncodeIssue[] {
  const issues: EncodeIssue[] = [];
  if (pv.version < 1) issues.push({ path: 'version', message: 'published versions start at 1 (0 is the base model)' });
  if (pv.parent_version !== null && pv.parent_version >= pv.version) {
    issues.push({ path: 'parent_version', message: 'must be older than version' });
  }
  if (!CHECKSUM.test(pv.adapter_checksum)) issues.push({ path: 'adapter_checksum', message: "must be 'sha256:' + 64 lower-case hex characters" });
  return issues;
}
