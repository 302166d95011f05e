export { loadConfig, parseConfig, applyEnvOverrides, ENV_PREFIX } from './load.js';
export { TrajstoreConfigSchema, type ImageProcessingConfig, type TrajstoreConfig, type TrajstoreConfigInput } from './schema.js';
