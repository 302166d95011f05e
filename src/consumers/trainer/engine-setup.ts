/**
 * Starting the engine for a run: the trajstore config mapped onto the engine's `init` config
 * (engine/PROTOCOL.md), and a checkpoint loaded when resuming.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { TrajstoreConfig } from '../../config/index.js';
import { EngineClient } from '../../engine/client.js';
import type { EngineConfig } from '../../engine/protocol.js';
import { parseStorageLocation } from '../../storage/location.js';
import { ConfigError } from '../../util/errors.js';
import type { Logger } from '../../util/logger.js';

/**
 * A vision run's engine also gets `vision.blob_root` (imageBlobRoot: where ImageBlobs puts every
 * image a batch cites). Text runs send no `vision` section: their engine config is unchanged.
 */
export function engineConfigFor(c: TrajstoreConfig): EngineConfig {
  return {
    model: { path: resolve(c.model.path ?? c.model.name), dtype: c.model.dtype, max_seq_length: c.model.max_seq_length },
    lora: { r: c.lora.r, alpha: c.lora.alpha, dropout: c.lora.dropout, target_modules: c.lora.target_modules },
    loss: {
      eps_low: c.training.clip_low,
      eps_high: c.training.clip_high,
      decoupled: c.training.decoupled_loss,
      behavior_weight_cap: c.training.behavior_weight_cap,
      kl_coef: c.training.kl_coef,
      normalization: c.training.loss_normalization,
      // Logprobs must be those of the distribution the server sampled from.
      temperature: c.rollout.temperature > 0 ? c.rollout.temperature : 1,
      // Staleness is decided per group by the trainer (drop or down-weight, counted); the engine keeps every token.
      max_staleness: null,
    },
    optim: { lr: c.training.learning_rate, weight_decay: c.training.weight_decay, max_grad_norm: c.training.max_grad_norm },
    training: {
      micro_batch_tokens: c.training.max_tokens_per_microbatch,
      gradient_checkpointing: c.model.gradient_checkpointing ? true : 'auto',
    },
    ...(isVisionRun(c) ? { vision: { blob_root: imageBlobRoot(c) } } : {}),
    seed: c.run.seed,
  };
}

/** A vision-language run: the policy's image settings are configured (inference.image_processing). */
export function isVisionRun(c: TrajstoreConfig): boolean {
  return c.inference.image_processing !== undefined;
}

/** Where a vision run's engine reads images: the local blob store itself, or storage.blob_cache for an s3:// store. */
export function imageBlobRoot(c: TrajstoreConfig): string {
  const where = parseStorageLocation(c.storage.blobs);
  return resolve(where?.kind === 'local' ? where.path : c.storage.blob_cache);
}

/**
 * The image placeholder token id of a vision run (null for a text run): model.image_token_id,
 * else `image_token_id` in the model directory's config.json (Qwen2-VL/Qwen3-VL keep it at the
 * top level). A vision run without either is a configuration error: the trainer could not check
 * a single image's placeholders. So is a configured id that the model directory contradicts
 * (configs/cua_grpo.yaml's 151655 with model.path at another model): every group would be dropped
 * as image_placeholder_mismatch.
 */
export function imageTokenIdFor(c: TrajstoreConfig): number | null {
  if (!isVisionRun(c)) return null;
  const file = join(resolve(c.model.path ?? c.model.name), 'config.json');
  let fromModel: unknown;
  try {
    const json = JSON.parse(readFileSync(file, 'utf8')) as { image_token_id?: unknown; text_config?: { image_token_id?: unknown } };
    fromModel = json.image_token_id ?? json.text_config?.image_token_id;
  } catch {
    fromModel = undefined;
  }
  const known = typeof fromModel === 'number' && Number.isInteger(fromModel) && fromModel >= 0 ? fromModel : undefined;
  if (c.model.image_token_id !== undefined) {
    if (known !== undefined && known !== c.model.image_token_id) {
      throw new ConfigError('config', [{
        path: 'model.image_token_id',
        message: `is ${c.model.image_token_id}, but the model the engine loads (${file}) has image_token_id ${known}`,
      }], `set model.image_token_id to ${known}, or leave it out to read it from the model directory`);
    }
    return c.model.image_token_id;
  }
  if (known !== undefined) return known;
  throw new ConfigError('config', [{
    path: 'model.image_token_id',
    message: `inference.image_processing makes this a vision run, but the image token id is neither set nor in ${file}`,
  }], 'set model.image_token_id (Qwen2-VL/Qwen3-VL: 151655, the id of <|image_pad|>), or model.path to the model directory');
}

export async function startEngine(c: TrajstoreConfig, logger: Logger): Promise<EngineClient> {
  const engine = await EngineClient.start({ logger: logger.child({ component: 'engine' }), nprocPerNode: c.training.num_gpus });
  try {
    await engine.init(engineConfigFor(c));
  } catch (err) {
    await engine.kill().catch(() => undefined);
    throw err;
  }
  return engine;
}
