import { resolve } from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../../config/index.js';
import { copyVersion, openAdapterStore, type AdapterStore } from '../../consumers/trainer/adapter-store.js';
import { TrainerError, TrainerErrorCode } from '../../consumers/trainer/errors.js';
import { s3OptionsOf } from '../../storage/s3.js';
import { positiveInt } from '../arguments.js';

/**
 * `trajstore adapters list|pull`: the versions a run published to the adapter store
 * (`storage.adapters`, local or S3), and a verified copy of one in a directory, for a policy host
 * or an evaluation that does not share the trainer's disk.
 */
export function registerAdaptersCommand(program: Command): void {
  const adapters = program.command('adapters').description("list a run's published adapter versions, or copy one out of the store (verified)");

  adapters
    .command('list')
    .description("a run's committed versions with their checksums and addresses, oldest first")
    .requiredOption('-c, --config <file>', 'YAML config (storage section)')
    .requiredOption('--run <id>', 'the run that published them')
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: { config: string; run: string; json?: boolean }) => {
      const versions = await storeOf(opts.config).versions(opts.run);
      if (opts.json) {
        console.log(JSON.stringify(versions, null, 2));
        return;
      }
      if (versions.length === 0) console.error(`run ${opts.run} has no versions in the adapter store`);
      for (const v of versions) console.log(`v${v.version}  ${v.checksum}  ${v.uri}`);
    });

  adapters
    .command('pull')
    .description('copy a version (default: the newest) into a new directory, PEFT files as vLLM and PEFT load them; checked against its checksum')
    .requiredOption('-c, --config <file>', 'YAML config (storage section)')
    .requiredOption('--run <id>', 'the run that published it')
    .argument('[version]', 'version number (default: the newest)', positiveInt)
    .requiredOption('--to <dir>', 'destination directory (created; must be empty)')
    .action(async (version: number | undefined, opts: { config: string; run: string; to: string }) => {
      const store = storeOf(opts.config);
      const versions = await store.versions(opts.run);
      const entry = version === undefined ? versions.at(-1) : versions.find((v) => v.version === version);
      if (!entry) {
        const have = versions.length ? `it has ${versions.map((v) => `v${v.version}`).join(', ')}` : 'it has none';
        throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `run ${opts.run} has no ${version === undefined ? 'versions' : `version ${version}`} in ${store.location}; ${have}`, {
          hint: '`trajstore adapters list` shows what a run published; check --run and storage.adapters',
        });
      }
      const stored = await store.open(opts.run, entry.version, entry.checksum);
      const dest = resolve(opts.to);
      copyVersion(stored, dest);
      console.log(JSON.stringify({ run: opts.run, version: entry.version, checksum: entry.checksum, uri: entry.uri, dir: dest }));
    });
}

function storeOf(configFile: string): AdapterStore {
  const { storage } = loadConfig(configFile);
  return openAdapterStore({ adapters: storage.adapters, adapterCache: storage.adapter_cache, s3: s3OptionsOf(storage) });
}
