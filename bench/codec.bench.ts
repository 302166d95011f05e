/**
 * Codec benchmark: a realistic Turn event (1,024 prompt tokens, 256 completion tokens with
 * behavior logprobs, chat-shaped prompt text) through the Avro codec and, in the same run and
 * on the same event, through JSON.stringify/JSON.parse.
 *
 * Both sides produce and consume bytes, as a Kafka producer and consumer do: Avro is
 * encodeTrajectoryEvent/decodeTrajectoryEvent (schema validation, invariants, the bounds guard,
 * the fingerprint lookup: everything production pays); JSON is Buffer.from(JSON.stringify(e))
 * and JSON.parse(buf.toString()). JSON on strings alone (no byte conversion, no validation at
 * all) is measured too, and the ratios are taken against whichever JSON variant is faster, so
 * they do not flatter Avro.
 *
 * Method: warm-up, then REPS rounds; in each round every variant runs for about ROUND_MS,
 * interleaved so drift hits all alike; the median round is reported, with min and max.
 *
 *   npm run bench:codec            (env: BENCH_REPS, BENCH_ROUND_MS)
 */
import { gzipSync } from 'node:zlib';
import { decodeTrajectoryEvent, encodeTrajectoryEvent, newTrajectoryEvent, type TrajectoryEvent } from '../src/schemas/index.js';
import { mulberry32 as prng } from '../src/util/random.js';

const REPS = Number(process.env.BENCH_REPS ?? 7);
const ROUND_MS = Number(process.env.BENCH_ROUND_MS ?? 400);
const PROMPT_TOKENS = 1024;
const COMPLETION_TOKENS = 256;
const VOCAB = 151_936; // Qwen3 tokenizer


const rand = prng(20251123);

/**
 * Token ids with a Zipf-like rank distribution, as BPE vocabularies have (frequent tokens get
 * small ids): most ids of real text fall in the low thousands, a tail reaches the whole vocab,
 * and chat-template specials (151643+) recur.
 */
function tokenIds(n: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    if (rand() < 0.02) ids.push(151643 + Math.floor(rand() * 12));
    else ids.push(Math.min(VOCAB - 1, Math.floor(Math.exp(rand() * Math.log(VOCAB)))));
  }
  return ids;
}

/** Behavior logprobs: mostly confident tokens near 0, some uncertain ones; float32 as Avro stores them. */
function logprobs(n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(Math.fround(-(rand() ** 4) * 6 - rand() * 1e-3));
  return out;
}

const WORDS = (
  'the a to of and in is for on that with click button field form page enter submit value type select ' +
  'screenshot element coordinates user assistant task complete observe action next input text email ' +
  'password login search result list item menu open close scroll down up left right wait verify name ' +
  'address phone checkbox dropdown option label heading link navigate back confirm dialog error message'
).split(' ');

/** About `chars` characters of prose made of UI-task words (English text is ~4 chars per token). */
function prose(chars: number): string {
  let s = '';
  while (s.length < chars) {
    s += WORDS[Math.floor(rand() * WORDS.length)]!;
    s += rand() < 0.08 ? '. ' : rand() < 0.05 ? ', ' : ' ';
  }
  return s.slice(0, chars);
}

/**
 * A text-task agent turn (the kind the demo environments produce): 1,024 prompt tokens of chat
 * (system prompt, task, an earlier exchange, the newest observation), 256 completion tokens of
 * reasoning plus an action, and ~4 characters of text per token, as English BPE text has.
 * `promptForm` 'full' stores every message as sent; 'delta' only the messages added since the
 * previous turn, the compact form a producer writes from an episode's second turn on (the
 * token ids are the full prompt's in both: the trainer needs them).
 */
function realisticTurn(promptForm: 'full' | 'delta'): TrajectoryEvent {
  const newest = { role: 'user', content: `Observation after your last action: ${prose(560)}` };
  const messages = [
    { role: 'system', content: `You are an agent that completes tasks step by step. ${prose(1350)} Reply with <action>{"type": ..., ...}</action>.` },
    { role: 'user', content: `Task: ${prose(1450)}` },
    { role: 'assistant', content: `<think>${prose(650)}</think><action>{"type":"click","target":"#email"}</action>` },
    newest,
  ];
  return newTrajectoryEvent({
    run_id: 'run-2025-11-23-text-qwen3-0.6b',
    group_id: 'grp-7f3a9c2e-000417',
    episode_id: 'ep-7f3a9c2e-000417-05',
    seq: 7,
    producer_id: 'rollout-worker-12@host-03',
    policy_version: 41,
    purpose: 'train',
    trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
    tags: { experiment: 'lr-1e-5', pool: 'cpu-a' },
    payload: {
      Turn: {
        turn_index: 3,
        model: 'run-2025-11-23-text-qwen3-0.6b-v41',
        prompt_token_ids: tokenIds(PROMPT_TOKENS),
        completion_token_ids: tokenIds(COMPLETION_TOKENS),
        completion_logprobs: logprobs(COMPLETION_TOKENS),
        token_policy_versions: null,
        prompt_format: promptForm === 'full' ? 'messages_json' : 'messages_delta_json',
        prompt: JSON.stringify(promptForm === 'full' ? messages : [newest]),
        completion_text: `<think>${prose(900)}</think><action>{"type":"type","target":"#email","text":"jane.doe@example.com"}</action>`,
        action: { type: 'type', args_json: '{"target":"#email","text":"jane.doe@example.com"}' },
        action_parse_error: null,
        observation: null,
        latency_ms: 1843,
        env_latency_ms: 12,
        finish_reason: 'stop',
        request_id: 'cmpl-9b1d8e7f6a5c4b3a',
        prompt_images: [],
        image_processing: null,
      },
    },
  });
}

/** The same event with its text fields emptied: what the token ids and logprobs cost alone. */
function withoutText(event: TrajectoryEvent): TrajectoryEvent {
  const turn = (event.payload as unknown as { Turn: Record<string, unknown> }).Turn;
  return { ...event, payload: { Turn: { ...turn, prompt: '', completion_text: '' } } } as TrajectoryEvent;
}

interface Variant {
  name: string;
  run: () => number;
}

/** Runs `fn` for about `ms`, returns operations per second. */
function timeRound(fn: () => number, ms: number): { opsPerSec: number; sink: number } {
  let sink = 0;
  let ops = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1_000_000n;
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 64; i++) sink += fn();
    ops += 64;
    now = process.hrtime.bigint();
  }
  return { opsPerSec: ops / (Number(now - start) / 1e9), sink };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function main(): void {
  const event = realisticTurn('full');
  // Reuse the full event's token ids, logprobs and completion: only the prompt text differs.
  const delta = (() => {
    const d = realisticTurn('delta');
    const t = (d.payload as unknown as { Turn: Record<string, unknown> }).Turn;
    const e = (event.payload as unknown as { Turn: Record<string, unknown> }).Turn;
    t.prompt_token_ids = e.prompt_token_ids;
    t.completion_token_ids = e.completion_token_ids;
    t.completion_logprobs = e.completion_logprobs;
    t.completion_text = e.completion_text;
    return d;
  })();
  const avroBytes = encodeTrajectoryEvent(event);
  const jsonString = JSON.stringify(event);
  const jsonBytes = Buffer.from(jsonString);
  const avroV1Bytes = encodeTrajectoryEvent(event, { writerVersion: 1 });
  const deltaAvro = encodeTrajectoryEvent(delta);
  const deltaJson = Buffer.from(JSON.stringify(delta));
  const bare = withoutText(event);
  const bareAvro = encodeTrajectoryEvent(bare).length;
  const bareJson = Buffer.byteLength(JSON.stringify(bare));

  // The two decoders must agree before their speed means anything.
  const back = decodeTrajectoryEvent(avroBytes);
  if (JSON.stringify(back) !== JSON.stringify(JSON.parse(jsonString))) throw new Error('Avro and JSON round trips disagree');

  const turn = (event.payload as { Turn: { prompt: string; completion_text: string } }).Turn;
  const textChars = turn.prompt.length + turn.completion_text.length;
  console.log(`event: Turn with ${PROMPT_TOKENS} prompt + ${COMPLETION_TOKENS} completion tokens (+ logprobs), ${textChars} chars of text (full chat messages)`);
  console.log(`size: avro ${avroBytes.length} B, json ${jsonBytes.length} B (gzip: avro ${gzipSync(avroBytes).length} B, json ${gzipSync(jsonBytes).length} B)`);
  console.log(`size without text: avro ${bareAvro} B, json ${bareJson} B; delta prompt form: avro ${deltaAvro.length} B, json ${deltaJson.length} B`);

  const variants: Variant[] = [
    { name: 'avro.encode', run: () => encodeTrajectoryEvent(event).length },
    { name: 'avro.decode', run: () => decodeTrajectoryEvent(avroBytes).seq },
    { name: 'avro.decode_v1_resolved', run: () => decodeTrajectoryEvent(avroV1Bytes).seq },
    { name: 'avro.decode_delta_form', run: () => decodeTrajectoryEvent(deltaAvro).seq },
    { name: 'json.decode_delta_form', run: () => (JSON.parse(deltaJson.toString('utf8')) as TrajectoryEvent).seq },
    { name: 'json.encode_bytes', run: () => Buffer.from(JSON.stringify(event)).length },
    { name: 'json.decode_bytes', run: () => (JSON.parse(jsonBytes.toString('utf8')) as TrajectoryEvent).seq },
    { name: 'json.encode_string', run: () => JSON.stringify(event).length },
    { name: 'json.decode_string', run: () => (JSON.parse(jsonString) as TrajectoryEvent).seq },
  ];

  console.log(`warm-up (${variants.length} variants x 300 ms)...`);
  let sink = 0;
  for (const v of variants) sink += timeRound(v.run, 300).sink;

  const rounds = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  for (let r = 1; r <= REPS; r++) {
    const line: string[] = [];
    for (const v of variants) {
      const { opsPerSec, sink: s } = timeRound(v.run, ROUND_MS);
      sink += s;
      rounds.get(v.name)!.push(opsPerSec);
      line.push(`${v.name} ${Math.round(opsPerSec).toLocaleString('en-US')}/s`);
    }
    console.log(`round ${r}/${REPS}: ${line.join(', ')}`);
  }

  const stat = (name: string) => {
    const xs = rounds.get(name)!;
    return { median: Math.round(median(xs)), min: Math.round(Math.min(...xs)), max: Math.round(Math.max(...xs)) };
  };
  const s = Object.fromEntries(variants.map((v) => [v.name, stat(v.name)]));
  const jsonDecodeBest = Math.max(s['json.decode_bytes']!.median, s['json.decode_string']!.median);
  const jsonEncodeBest = Math.max(s['json.encode_bytes']!.median, s['json.encode_string']!.median);
  const result = {
    event: { type: 'Turn', prompt_tokens: PROMPT_TOKENS, completion_tokens: COMPLETION_TOKENS, text_chars: textChars, prompt_format: 'messages_json' },
    method: { reps: REPS, round_ms: ROUND_MS, statistic: 'median of rounds (events/s)', node: process.version, arch: process.arch },
    avro: {
      encode_eps: s['avro.encode']!.median,
      decode_eps: s['avro.decode']!.median,
      decode_v1_resolved_eps: s['avro.decode_v1_resolved']!.median,
      bytes: avroBytes.length,
      gzip_bytes: gzipSync(avroBytes).length,
    },
    json: {
      encode_eps: s['json.encode_bytes']!.median,
      decode_eps: s['json.decode_bytes']!.median,
      encode_string_only_eps: s['json.encode_string']!.median,
      decode_string_only_eps: s['json.decode_string']!.median,
      bytes: jsonBytes.length,
      gzip_bytes: gzipSync(jsonBytes).length,
    },
    ratios: {
      decode_speedup_vs_json: Number((s['avro.decode']!.median / jsonDecodeBest).toFixed(2)),
      // The same ratio taken within each round (variants run back to back), then the median:
      // steadier than the ratio of medians when the machine is shared.
      decode_speedup_vs_json_per_round_median: Number(
        median(
          rounds.get('avro.decode')!.map((a, i) => a / Math.max(rounds.get('json.decode_bytes')![i]!, rounds.get('json.decode_string')![i]!)),
        ).toFixed(2),
      ),
      encode_speedup_vs_json: Number((s['avro.encode']!.median / jsonEncodeBest).toFixed(2)),
      size_avro_over_json: Number((avroBytes.length / jsonBytes.length).toFixed(3)),
      gzip_size_avro_over_json: Number((gzipSync(avroBytes).length / gzipSync(jsonBytes).length).toFixed(3)),
      size_without_text_avro_over_json: Number((bareAvro / bareJson).toFixed(3)),
    },
    delta_prompt_form: {
      avro_bytes: deltaAvro.length,
      json_bytes: deltaJson.length,
      size_avro_over_json: Number((deltaAvro.length / deltaJson.length).toFixed(3)),
      avro_decode_eps: s['avro.decode_delta_form']!.median,
      json_decode_eps: s['json.decode_delta_form']!.median,
    },
    goals: {
      decode_at_least_3x_json: s['avro.decode']!.median >= 3 * jsonDecodeBest,
      size_under_half_json: avroBytes.length < jsonBytes.length / 2,
    },
    spread: s,
    sink_checksum: sink % 1000,
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
}

main();
