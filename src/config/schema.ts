import { z } from 'zod';

/**
 * The one typed configuration every trajstore entry point (rollout, sink, train, replay, api)
 * reads. Sections follow the seeds' `configs/cua_grpo.yaml` (model, lora, training, rollout,
 * inference, checkpoint) plus the log and the stores. Objects are strict: a misspelt key is an
 * error naming the key, not a silently ignored setting.
 */

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().nonnegative();
const probability = z.number().min(0).max(1);
const hostPort = z.string().regex(/^[^\s:]+:\d{1,5}$/, 'expected host:port, e.g. 127.0.0.1:9092');
const httpUrl = z.string().url().refine((u) => /^https?:\/\//.test(u), 'expected an http(s) URL');
/** Kafka topic names: the legal character set and length from Kafka's own Topic.validate. */
const topicName = z.string().regex(/^[a-zA-Z0-9._-]{1,249}$/, 'topic names use [a-zA-Z0-9._-], 1-249 characters');
/** ClickHouse identifiers we create ourselves: keep them plain so they never need quoting. */
const identifier = z.string().regex(/^[a-zA-Z_][a-zA-Z0-9_]{0,62}$/, 'use letters, digits and _ (not starting with a digit)');

export const RunSection = z
  .object({
    id: z.string().regex(/^[a-zA-Z0-9._-]{1,128}$/, 'run ids use [a-zA-Z0-9._-], 1-128 characters').default('default'),
    seed: nonNegativeInt.default(0),
  })
  .strict();

export const ModelSection = z
  .object({
    /** Hugging Face name as the policy server knows it (vLLM's --model / served model name). */
    name: z.string().min(1),
    /** Local Hugging Face directory the training engine loads; defaults to `name` when absent. */
    path: z.string().min(1).optional(),
    max_seq_length: positiveInt.default(16384),
    dtype: z.enum(['bfloat16', 'float16', 'float32']).default('bfloat16'),
    gradient_checkpointing: z.boolean().default(false),
    /**
     * Vision-language models: the id of the image placeholder token (`<|image_pad|>`, 151655 in
     * Qwen2-VL/Qwen3-VL) that the server repeats once per merged image patch. The trainer counts
     * it to check every Turn's prompt against its images. Unset: read from `image_token_id` in
     * the model directory's config.json (model.path, or model.name when it is a directory).
     */
    image_token_id: nonNegativeInt.optional(),
  })
  .strict();

export const LoraSection = z
  .object({
    r: positiveInt.default(16),
    alpha: z.number().positive().default(32),
    dropout: probability.default(0.05),
    target_modules: z.array(z.string().min(1)).min(1).default(['q_proj', 'k_proj', 'v_proj', 'o_proj']),
  })
  .strict();

export const TrainingSection = z
  .object({
    learning_rate: z.number().positive().default(1e-5),
    /** Groups per optimizer step (the seeds' batch_size: tasks per step). */
    batch_size: positiveInt.default(4),
    /** Token budget of one micro-batch handed to the engine; lower it on CUDA out-of-memory. */
    max_tokens_per_microbatch: positiveInt.default(32768),
    max_steps: positiveInt.default(200),
    weight_decay: z.number().nonnegative().default(0),
    max_grad_norm: z.number().positive().default(1.0),
    /** PPO-clip range on the importance ratio, asymmetric as in DAPO. */
    clip_low: z.number().positive().default(0.2),
    clip_high: z.number().positive().default(0.28),
    /** AReaL's decoupled objective: proximal policy plus a capped behavior importance weight. */
    decoupled_loss: z.boolean().default(false),
    behavior_weight_cap: z.number().positive().default(5),
    kl_coef: z.number().nonnegative().default(0),
    loss_normalization: z.enum(['token', 'sequence']).default('token'),
    advantage_std_scaling: z.boolean().default(true),
    /** How many policy versions behind the current one a group may be and still train. */
    max_staleness: nonNegativeInt.default(4),
    stale_policy: z.enum(['drop', 'downweight']).default('drop'),
    /** Publish a new adapter version every N optimizer steps. */
    publish_every_steps: positiveInt.default(1),
    /** Groups whose producer went silent are closed after this long. */
    group_timeout_s: z.number().positive().default(600),
    /** Groups assembled at once at most; past it the least recently active one is closed (counted as evicted). */
    max_open_groups: positiveInt.default(4096),
    /** Token budget of one optimizer step: fewer than batch_size groups when it would be passed; 0: none. */
    max_tokens_per_step: nonNegativeInt.default(0),
    output_dir: z.string().min(1).default('outputs/grpo'),
    eval_steps: nonNegativeInt.default(0),
    /** GPUs the engine trains on; > 1 runs it under torchrun with FSDP2 across them (one node). */
    num_gpus: positiveInt.default(1),
  })
  .strict()
  .refine((t) => t.clip_low < 1, { message: 'clip_low must be below 1', path: ['clip_low'] });

export const RolloutSection = z
  .object({
    environment: z.enum(['text', 'browser', 'gbox']).default('text'),
    /** The GRPO group size G: episodes per task. */
    num_rollouts: z.number().int().min(2, 'a GRPO group needs at least 2 rollouts').default(4),
    max_turns: positiveInt.default(15),
    concurrency: positiveInt.default(4),
    episode_timeout_s: z.number().positive().default(300),
    /** Admission control: start groups only while the trainer can use them within max_staleness. */
    staleness_pacing: z.boolean().default(true),
    temperature: z.number().nonnegative().default(1.0),
    top_p: z.number().gt(0).max(1).default(1.0),
    max_tokens: positiveInt.default(512),
    /** Free-form settings of the chosen environment (task families, difficulty, ...). */
    env_options: z.record(z.string(), z.unknown()).default({}),
    /** Producer processes sharing the run: staleness pacing gives each its share of the budget. */
    num_producers: positiveInt.default(1),
    /** Held-out tasks run against each new policy version (purpose eval, never trained on); 0: no eval. */
    eval_tasks: nonNegativeInt.default(0),
    /** Sampling temperature of eval episodes (0: greedy). */
    eval_temperature: z.number().nonnegative().default(0),
    /** Compression of the producer's Kafka batches (kafkajs ships gzip; others need codecs). */
    compression: z.enum(['none', 'gzip']).default('gzip'),
  })
  .strict();

/**
 * A vision policy's image settings, as the server applies them (Qwen2-VL/Qwen3-VL style: each
 * image is resized to a multiple of patch_size * merge_size with min_pixels..max_pixels pixels,
 * then cut into patches; merge_size^2 patches make one placeholder token). Recorded on every Turn
 * with images, so the trainer and the engine rebuild exactly what was sampled. All explicit: a
 * server default that changes between releases would silently change every image's tokens.
 */
export const ImageProcessingSection = z
  .object({
    /** The image processor class the server runs, e.g. Qwen2VLImageProcessorFast. */
    processor: z.string().min(1),
    /** Which software ran it, e.g. "vLLM 0.11.0" or "transformers 5.17.0". */
    processor_version: z.string().min(1),
    min_pixels: positiveInt,
    max_pixels: positiveInt,
    patch_size: positiveInt,
    merge_size: positiveInt,
    temporal_patch_size: positiveInt,
  })
  .strict()
  .refine((p) => p.min_pixels <= p.max_pixels, { message: 'min_pixels must be <= max_pixels', path: ['min_pixels'] });

export const InferenceSection = z
  .object({
    backend: z.enum(['vllm', 'cpu']).default('vllm'),
    /** Every policy server that serves the policy; new adapter versions are pushed to each. */
    api_bases: z.array(httpUrl).min(1).default(['http://localhost:8000/v1']),
    api_key: z.string().optional(),
    request_timeout_s: z.number().positive().default(120),
    max_retries: nonNegativeInt.default(3),
    /** Adapter versions kept loaded on each server; keep it at or below vLLM's --max-loras. */
    max_loaded_adapters: positiveInt.default(4),
    /**
     * Set for a vision-language policy (it marks the run as one): the image settings the server
     * applies. Producers send min/max pixels with every request (vLLM's per-request
     * `mm_processor_kwargs`) and record the settings on each Turn with images; the trainer gives
     * the engine the blobs (see storage.blob_cache).
     */
    image_processing: ImageProcessingSection.optional(),
  })
  .strict();

export const CheckpointSection = z
  .object({
    dir: z.string().min(1).default('outputs/grpo/checkpoints'),
    save_every_steps: positiveInt.default(10),
    keep_last: positiveInt.default(3),
  })
  .strict();

export const KafkaSection = z
  .object({
    brokers: z.array(hostPort).min(1).default(['127.0.0.1:9092']),
    client_id: z.string().min(1).default('trajstore'),
    topics: z
      .object({
        trajectories: topicName.default('trajectories'),
        policy_versions: topicName.default('policy.versions'),
        trainer_metrics: topicName.default('trainer.metrics'),
        dead_letter: topicName.default('trajstore.dead-letter'),
      })
      .strict()
      .default({
        trajectories: 'trajectories',
        policy_versions: 'policy.versions',
        trainer_metrics: 'trainer.metrics',
        dead_letter: 'trajstore.dead-letter',
      }),
    partitions: positiveInt.default(6),
    replication_factor: positiveInt.default(1),
  })
  .strict();

export const ClickHouseSection = z
  .object({
    url: httpUrl.default('http://127.0.0.1:8123'),
    database: identifier.default('trajstore'),
    username: z.string().default('default'),
    password: z.string().default(''),
  })
  .strict();

/** The ClickHouse sink (`trajstore sink`): how it batches, retries and joins its consumer group. */
export const SinkSection = z
  .object({
    /** Kafka consumer group; default `trajstore-sink.<clickhouse.database>`, so each database has its own position. */
    group_id: z.string().min(1).optional(),
    /** Flush when this many rows wait… */
    batch_max_rows: positiveInt.default(20000),
    /** …or when the oldest waiting row is this old. */
    batch_max_ms: positiveInt.default(1000),
    /** Flush early once no new batch arrived for this long (Kafka's linger.ms idea). */
    linger_ms: nonNegativeInt.default(20),
    /** Longest pause between retries while ClickHouse is unreachable (backoff doubles up to it). */
    retry_max_ms: positiveInt.default(10000),
    /** Kafka session timeout; a killed sink's partitions move on after this long (broker minimum 6000). */
    session_timeout_ms: z.number().int().min(6000).default(30000),
  })
  .strict();

export const StorageSection = z
  .object({
    /** Content-addressed blobs (screenshots): a local directory or an s3:// URI. */
    blobs: z.string().min(1).default('.trajstore/blobs'),
    /** Immutable adapter versions: a local directory or an s3:// URI. */
    adapters: z.string().min(1).default('.trajstore/adapters'),
    /**
     * With an s3:// adapter store: the local directory the trainer keeps each version in (and
     * downloads missing ones to on resume). Policy servers load adapters from a local path
     * (vLLM's load_lora_adapter), so they must see this directory (same host or shared volume).
     */
    adapter_cache: z.string().min(1).default('.trajstore/adapter-cache'),
    /**
     * Vision runs with an s3:// blob store: the local directory (the store's layout,
     * `sha256/<2 hex>/<hex>`) the trainer copies each image a batch cites into, verified by hash;
     * the engine reads images from it. With a local blob store the engine reads the store itself.
     */
    blob_cache: z.string().min(1).default('.trajstore/blob-cache'),
    /** S3-compatible endpoint (MinIO, R2, ...) for s3:// stores; unset: AWS. Credentials come from the AWS SDK's usual chain. */
    s3_endpoint: httpUrl.optional(),
    s3_region: z.string().min(1).default('us-east-1'),
    /** Path-style URLs (bucket in the path), which most S3-compatible servers need. */
    s3_force_path_style: z.boolean().default(false),
  })
  .strict();

/** The HTTP API and dashboard (`trajstore api`). */
export const ApiSection = z
  .object({
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(8080),
    /** Bearer token for mutating endpoints (replay jobs); unset: they answer 401 until one is set. */
    token: z.string().min(16, 'use at least 16 characters').optional(),
    /** Largest request body accepted (bytes); larger ones get 413. */
    body_limit_bytes: positiveInt.default(1_048_576),
    /** Requests per client (IP) per minute; more get 429. */
    rate_limit_per_minute: positiveInt.default(600),
    /** POST /sql: the most rows a query may return, and the server-side time limit. */
    sql_max_rows: positiveInt.default(10_000),
    sql_timeout_s: positiveInt.default(30),
    /** Replay jobs running at once; a start beyond it gets 409. */
    max_replay_jobs: positiveInt.default(1),
    /** Where replay jobs keep their config and logs. */
    jobs_dir: z.string().min(1).default('.trajstore/api/replay-jobs'),
  })
  .strict();

export const TrajstoreConfigSchema = z
  .object({
    run: RunSection.default({ id: 'default', seed: 0 }),
    model: ModelSection,
    lora: LoraSection.default(LoraSection.parse({})),
    training: TrainingSection.default(TrainingSection.parse({})),
    rollout: RolloutSection.default(RolloutSection.parse({})),
    inference: InferenceSection.default(InferenceSection.parse({})),
    checkpoint: CheckpointSection.default(CheckpointSection.parse({})),
    kafka: KafkaSection.default(KafkaSection.parse({})),
    clickhouse: ClickHouseSection.default(ClickHouseSection.parse({})),
    sink: SinkSection.default(SinkSection.parse({})),
    storage: StorageSection.default(StorageSection.parse({})),
    api: ApiSection.default(ApiSection.parse({})),
  })
  .strict();

/** A vision policy's image settings (inference.image_processing). */
export type ImageProcessingConfig = z.infer<typeof ImageProcessingSection>;
/** The validated configuration, every default filled in. */
export type TrajstoreConfig = z.infer<typeof TrajstoreConfigSchema>;
/** What a YAML file may contain: sections and keys with defaults are optional. */
export type TrajstoreConfigInput = z.input<typeof TrajstoreConfigSchema>;
