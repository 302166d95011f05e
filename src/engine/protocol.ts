/**
 * The engine protocol (engine/PROTOCOL.md) as TypeScript types, plus zod schemas for what crosses
 * the boundary from the engine (its ready line and replies), so a malformed line is caught where
 * it enters rather than as an `undefined` deep inside the trainer.
 *
 * Commands go to the engine's stdin, one JSON object a line; each gets exactly one reply line on
 * stdout, in order. Field names are the engine's (snake_case), so this file and PROTOCOL.md can be
 * read side by side.
 */
import { z } from 'zod';

/** The protocol version this client speaks; the engine announces its own in the ready line. */
export const PROTOCOL_VERSION = 1;

// ------------------------------------------------------------------------------------ config

/** `init`'s config. Every field is optional (the engine's default is named beside it); unknown fields are refused. */
export interface EngineConfig {
  model: {
    /** A local Hugging Face model directory (config.json, weights, tokenizer). Required. */
    path: string;
    /** auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16. */
    dtype?: string;
    /** auto (cuda when available) | cpu | cuda | cuda:N. */
    device?: string;
    /** Longer sequences are refused (TRAJ_E_ENGINE_BATCH_INVALID). Default 32768. */
    max_seq_length?: number;
  };
  lora?: {
    r?: number; // 16
    alpha?: number; // 32
    dropout?: number; // 0
    target_modules?: string[]; // q_proj, k_proj, v_proj, o_proj
  };
  loss?: {
    /** PPO clip range on the ratio: [1 - eps_low, 1 + eps_high]. Default 0.2 / 0.2. */
    eps_low?: number;
    eps_high?: number;
    /** AReaL's decoupled objective (proximal policy + capped behavior importance weight). Default false. */
    decoupled?: boolean;
    /** Cap on pi_prox / pi_behavior; null: none. Default 5. */
    behavior_weight_cap?: number | null;
    /** Tokens over the cap: mask (dropped) | truncate (weight = cap). Default mask. */
    behavior_weight_mode?: 'mask' | 'truncate';
    /** KL(pi || pi_base) coefficient, base = adapter disabled. Default 0. */
    kl_coef?: number;
    normalization?: 'token' | 'sequence';
    /** The rollouts' sampling temperature. Default 1. */
    temperature?: number;
    /** Tokens more than this many versions behind `policy_version` are dropped; null: keep all. */
    max_staleness?: number | null;
  };
  optim?: {
    lr?: number; // 1e-5
    betas?: [number, number];
    eps?: number;
    weight_decay?: number;
    warmup_steps?: number;
    /** null: no clipping. Default 1. */
    max_grad_norm?: number | null;
  };
  training?: {
    /** Tokens in one packed forward/backward. The main memory knob. Default 16384. */
    micro_batch_tokens?: number;
    /** true | false | auto (on for micro-batches over checkpoint_above_tokens). */
    gradient_checkpointing?: boolean | 'auto';
    checkpoint_above_tokens?: number;
    /** Optimizer steps per train_step (the batch is split in order). Default 1. */
    minibatches?: number;
    /** lm_head rows computed at once for logprobs. Default 4096. */
    logprob_chunk_tokens?: number;
    attention?: 'auto' | 'varlen' | 'loop';
    /** torch.compile: auto (layers on CUDA, none on CPU) | layers | kernels | none. */
    compile?: 'auto' | 'layers' | 'kernels' | 'none';
    /** Adds per-stage times (time_*_s, cpu_*_s) to train_step's metrics. */
    stage_timing?: boolean;
  };
  /**
   * Vision-language models only (the trainer sends it when inference.image_processing is set):
   * where the images a batch's `images` metadata cites are (batch-file.ts).
   */
  vision?: {
    /** Local directory in the blob store's layout, `<root>/sha256/<2 hex>/<hex>`; the engine only reads and checks each hash. */
    blob_root: string;
    /** Keep each image's (frozen) vision-encoder output within a train_step. Default true. */
    cache_images?: boolean;
  };
  seed?: number;
}

// ---------------------------------------------------------------------------------- commands

export interface InitCommand {
  cmd: 'init';
  config: EngineConfig;
}

export interface TrainStepCommand {
  cmd: 'train_step';
  /** Absolute path of a batch file (batch-file.ts). */
  batch: string;
  /** The version this step produces; staleness is measured against it. */
  policy_version?: number;
}

export interface ComputeLogprobsCommand {
  cmd: 'compute_logprobs';
  batch: string;
  /** Where the engine writes `logprobs` and `entropy` ([T] float32 safetensors). */
  out: string;
  /** false: the base model (adapter disabled). Default true. */
  adapter?: boolean;
}

export interface SaveCommand {
  cmd: 'save';
  /** The checkpoint directory; refused if it exists unless `overwrite`. */
  path: string;
  /** Stored in trainer_state.json and returned by `load` (e.g. Kafka offsets). */
  metadata?: Record<string, unknown>;
  overwrite?: boolean;
  policy_version?: number;
}

export interface LoadCommand {
  cmd: 'load';
  path: string;
}

export interface StatusCommand {
  cmd: 'status';
}

export interface ShutdownCommand {
  cmd: 'shutdown';
}

export type EngineCommand =
  | InitCommand
  | TrainStepCommand
  | ComputeLogprobsCommand
  | SaveCommand
  | LoadCommand
  | StatusCommand
  | ShutdownCommand;

export type EngineCommandName = EngineCommand['cmd'];

// ----------------------------------------------------------------------------------- results

/** What `init` and `status` describe. */
export interface EngineDescription {
  model_type: string;
  vocab_size: number;
  parameters: number;
  trainable_parameters: number;
  device: string;
  dtype: string;
  world_size: number;
  attention: string;
  compile: string;
  step: number;
}

export interface TrainStepResult {
  step: number;
  policy_version: number | null;
}

export interface ComputeLogprobsResult {
  out: string;
}

export interface SaveResult {
  path: string;
  step: number;
  /** Relative paths of the files written (rank 0). */
  files?: string[];
  bytes?: number;
  /** The PEFT adapter directory inside the checkpoint: what vLLM's load_lora_adapter takes. */
  adapter_path?: string;
}

export interface LoadResult {
  path: string;
  step: number;
  policy_version: number | null;
  metadata: Record<string, unknown>;
}

export interface StatusResult extends Partial<EngineDescription> {
  engine_version: string;
  protocol: number;
  initialized: boolean;
  world_size: number;
  pid: number;
  policy_version?: number | null;
}

export interface ShutdownResult {
  bye: true;
}

export interface ResultOf {
  init: EngineDescription;
  train_step: TrainStepResult;
  compute_logprobs: ComputeLogprobsResult;
  save: SaveResult;
  load: LoadResult;
  status: StatusResult;
  shutdown: ShutdownResult;
}

/**
 * Metrics of a reply: numbers (non-finite values arrive as null). Every reply has `elapsed_s`;
 * see TrainStepMetrics for train_step's.
 */
export type Metrics = Record<string, number | null>;

/** What train_step reports (PROTOCOL.md lists each with its meaning). */
export interface TrainStepMetrics extends Metrics {
  loss: number;
  token_loss_mean: number;
  clip_fraction: number;
  ratio_mean: number;
  ratio_max: number;
  importance_weight_mean: number;
  importance_weight_max: number;
  importance_weight_capped_fraction: number;
  kl_to_base: number;
  entropy: number;
  mismatch_abs_mean: number;
  mismatch_abs_max: number;
  mismatch_kl: number;
  mismatch_kl_k1: number;
  advantage_mean: number;
  staleness_mean: number;
  staleness_max: number;
  stale_dropped_tokens: number;
  tokens: number;
  trained_tokens: number;
  sequences: number;
  peak_memory_gib: number;
  grad_norm: number;
  grad_norm_max: number;
  lr: number;
  step_time_s: number;
  tokens_per_s: number;
  micro_batches: number;
  optimizer_steps: number;
  elapsed_s: number;
}

// ------------------------------------------------------------------------------ engine lines

/** The engine's error codes (engine/trajstore_engine/errors.py; PROTOCOL.md explains each). */
export const ENGINE_ERROR_CODES = [
  'TRAJ_E_ENGINE_BAD_REQUEST',
  'TRAJ_E_ENGINE_NOT_INITIALIZED',
  'TRAJ_E_ENGINE_MODEL_LOAD',
  'TRAJ_E_ENGINE_BATCH_INVALID',
  'TRAJ_E_ENGINE_OOM',
  'TRAJ_E_ENGINE_NON_FINITE',
  'TRAJ_E_ENGINE_CHECKPOINT',
  'TRAJ_E_ENGINE_UNSUPPORTED',
  'TRAJ_E_ENGINE_INTERNAL',
  /** A vision batch's image placeholder runs do not match what its images produce (details: sequence). */
  'TRAJ_E_ENGINE_IMAGE_TOKENS',
  /** An image a vision batch cites is not in vision.blob_root, or its bytes do not match its hash (details: sha256). */
  'TRAJ_E_ENGINE_IMAGE_MISSING',
] as const;

export type EngineErrorCode = (typeof ENGINE_ERROR_CODES)[number];

export const errorBodySchema = z.object({
  // A newer engine may add codes: accept any, the client maps unknown ones to a plain EngineError.
  code: z.string(),
  message: z.string(),
  hint: z.string().default(''),
  retriable: z.boolean().default(false),
  details: z.record(z.string(), z.unknown()).optional(),
});

export type EngineErrorBody = z.infer<typeof errorBodySchema>;

const metricsSchema = z.record(z.string(), z.number().nullable());

/** The first line the engine writes, once it can take commands. */
export const readyEventSchema = z.object({
  event: z.literal('ready'),
  protocol: z.number().int(),
  engine_version: z.string(),
  pid: z.number().int(),
  world_size: z.number().int(),
  torch: z.string(),
  cuda: z.boolean(),
});

export type ReadyEvent = z.infer<typeof readyEventSchema>;

export const replySchema = z.discriminatedUnion('ok', [
  z.object({
    id: z.union([z.number(), z.string(), z.null()]),
    cmd: z.string().nullable(),
    ok: z.literal(true),
    result: z.record(z.string(), z.unknown()),
    metrics: metricsSchema,
  }),
  z.object({
    id: z.union([z.number(), z.string(), z.null()]),
    cmd: z.string().nullable(),
    ok: z.literal(false),
    error: errorBodySchema,
    metrics: metricsSchema,
  }),
]);

export type EngineReplyLine = z.infer<typeof replySchema>;

/** A successful reply, as the client returns it. */
export interface EngineReply<C extends EngineCommandName, M extends Metrics = Metrics> {
  result: ResultOf[C];
  metrics: M;
}
