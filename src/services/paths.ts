import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root: the nearest ancestor of this file that holds package.json. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the trajstore project root (no package.json above src/)');
    dir = parent;
  }
  return dir;
}

/**
 * Where local services keep their data, logs and pid files: `TRAJSTORE_HOME`, or `.trajstore/`
 * in the project (git-ignored). Several homes can run side by side on different ports.
 */
export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.TRAJSTORE_HOME ?? join(projectRoot(), '.trajstore'));
}

/** Downloads shared by every home (Kafka's jars): `TRAJSTORE_CACHE`, or `.trajstore/cache`. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.TRAJSTORE_CACHE ?? join(projectRoot(), '.trajstore', 'cache'));
}
