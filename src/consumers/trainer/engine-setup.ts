/**
 * Starting the engine for a run: the trajstore config mapped onto the engine's `init` config
 * (engine/PROTOCOL.md), and a checkpoint loaded when resuming.
 */
import { resolve } from 'node:path';
import type { TrajstoreConfig } from '../../config/index.js';
import { EngineClient } from '../../engine/client.js';
import type { EngineConfig } from '../../engine/protocol.js';
import type { Logger } from '../../util/logger.js';

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
    seed: c.run.seed,
  };
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
