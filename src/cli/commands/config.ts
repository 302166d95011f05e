import type { Command } from 'commander';
import { loadConfig } from '../../config/index.js';

export function registerConfigCommand(program: Command): void {
  const config = program.command('config').description('configuration files');
  config
    .command('check')
    .argument('<file>', 'a YAML config, e.g. configs/cua_grpo.yaml')
    .option('--print', 'print the resolved configuration (defaults and environment overrides applied) as JSON')
    .description('validate a config file; errors name each bad field')
    .action((file: string, opts: { print?: boolean }) => {
      const resolved = loadConfig(file);
      if (opts.print) console.log(JSON.stringify(resolved, null, 2));
      console.error(`${file}: ok (run ${resolved.run.id}, model ${resolved.model.name})`);
    });
}
