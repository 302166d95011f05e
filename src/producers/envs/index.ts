/**
 * Picks the environment a config names (rollout.environment) and builds it with its options
 * (rollout.env_options). Browser and GBox are imported lazily, so a text-only producer never
 * loads playwright or the GBox SDK.
 */
import type { TrajstoreConfig } from '../../config/index.js';
import { openBlobStore } from '../../storage/blob-store.js';
import { s3OptionsOf } from '../../storage/s3.js';
import type { Logger } from '../../util/logger.js';
import type { EnvironmentFactory } from '../environment.js';
import { TextTasks, textEnvOptions } from './text.js';

export async function createEnvironments(config: TrajstoreConfig, logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<EnvironmentFactory> {
  const options = config.rollout.env_options;
  const seed = config.run.seed;
  switch (config.rollout.environment) {
    case 'text':
      return new TextTasks(seed, textEnvOptions(options));
    case 'browser': {
      const { BrowserTasks, browserEnvOptions } = await import('./browser.js');
      const blobs = openBlobStore(config.storage.blobs, s3OptionsOf(config.storage));
      return BrowserTasks.launch(seed, browserEnvOptions(options), blobs, logger);
    }
    case 'gbox': {
      const { GBoxTasks, gboxEnvOptions } = await import('./gbox.js');
      const blobs = openBlobStore(config.storage.blobs, s3OptionsOf(config.storage));
      return new GBoxTasks(seed, gboxEnvOptions(options, env), blobs, logger);
    }
  }
}
