/**
 * GBox, the seeds' cloud environment (Linux or Android boxes driven over an HTTP API), through
 * its official TypeScript SDK `gbox-sdk`. Needs GBOX_API_KEY; without it the environment refuses
 * to start and says what to set.
 *
 * A task (rollout.env_options.tasks) names what the agent must do and how to judge it inside the
 * box, as the seeds' GBox agent did with its own reward function:
 *
 *   tasks:
 *     - id: open-settings
 *       instruction: Open the Settings app.
 *       setup: "am start -n com.android.launcher3/.Launcher"   # optional, run before the first screenshot
 *       check: "dumpsys window | grep mCurrentFocus"            # run after the episode
 *       expect: "com.android.settings"                          # regex on the check's stdout: success
 *       split: train                                            # or eval (held out)
 *
 * Each episode creates a box, runs the setup, then loops screenshot → action; the box is deleted
 * when the episode closes. Screenshots go to the blob store like the browser's.
 */
import { GboxSDK } from 'gbox-sdk';
import type { AndroidBoxOperator } from 'gbox-sdk/wrapper/box/android';
import type { LinuxBoxOperator } from 'gbox-sdk/wrapper/box/linux';
import type { BlobStore } from '../../storage/blob-store.js';
import { imageSize, type ImageSize } from '../../storage/image-size.js';
import type { Logger } from '../../util/logger.js';
import { ACTION_HELP, actionRecord, MalformedActionError, parseAction, type ComputerAction } from '../actions.js';
import { screenshotsInPrompt, type Environment, type EnvironmentFactory, type Observation, type ResetResult, type RewardResult, type Split, type StepResult, type TaskSpec } from '../environment.js';
import { ProducerError } from '../errors.js';

export interface GBoxTask {
  id: string;
  instruction: string;
  setup?: string;
  check: string;
  expect: string;
  split: Split;
}

export interface GBoxEnvOptions {
  apiKey: string;
  /** GBox API root; default: the SDK's (GBOX_CLIENT_BASE_URL, else GBox's cloud). */
  baseUrl?: string;
  boxType: 'linux' | 'android';
  tasks: GBoxTask[];
  /** How long a box may live (GBox's expiresIn), e.g. "30m". */
  boxExpiresIn: string;
  /** Put the screenshot into the prompt (default true: GBox tasks are visual). */
  sendScreenshots: boolean;
  /** How many of the newest screenshots a prompt carries (screenshots_in_prompt, default 1). */
  screenshotsInPrompt: number;
}

function configError(message: string, hint?: string): ProducerError {
  return new ProducerError('TRAJ_E_ENV_CONFIG', message, { hint: hint ?? 'see src/producers/README.md (GBox) for the env_options a GBox run takes' });
}

export function gboxEnvOptions(raw: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): GBoxEnvOptions {
  const apiKey = env.GBOX_API_KEY;
  if (!apiKey) {
    throw configError('GBOX_API_KEY is not set: the GBox environment cannot create boxes without it',
      'set GBOX_API_KEY to your GBox API key (export GBOX_API_KEY=..., or put it in .env as the seeds do); or pick rollout.environment text or browser');
  }
  for (const key of Object.keys(raw)) {
    if (!['tasks', 'box_type', 'base_url', 'box_expires_in', 'send_screenshots', 'screenshots_in_prompt'].includes(key)) {
      throw configError(`rollout.env_options.${key} is not a GBox option (tasks, box_type, base_url, box_expires_in, send_screenshots, screenshots_in_prompt)`);
    }
  }
  const boxType = (raw.box_type ?? 'android') as string;
  if (boxType !== 'linux' && boxType !== 'android') throw configError(`rollout.env_options.box_type must be linux or android, got ${JSON.stringify(boxType)}`);
  if (!Array.isArray(raw.tasks) || raw.tasks.length === 0) throw configError('rollout.env_options.tasks must list at least one task (id, instruction, check, expect)');
  const tasks = raw.tasks.map((t, i) => {
    const task = t as Record<string, unknown>;
    for (const f of ['id', 'instruction', 'check', 'expect'] as const) {
      if (typeof task[f] !== 'string' || task[f] === '') throw configError(`rollout.env_options.tasks[${i}].${f} must be a non-empty string`);
    }
    try {
      new RegExp(task.expect as string);
    } catch {
      throw configError(`rollout.env_options.tasks[${i}].expect is not a valid regular expression`);
    }
    const split = (task.split ?? 'train') as Split;
    if (split !== 'train' && split !== 'eval') throw configError(`rollout.env_options.tasks[${i}].split must be train or eval`);
    return { id: task.id as string, instruction: task.instruction as string, setup: task.setup as string | undefined, check: task.check as string, expect: task.expect as string, split };
  });
  return { apiKey, baseUrl: (raw.base_url as string | undefined) ?? env.GBOX_CLIENT_BASE_URL, boxType, tasks, boxExpiresIn: String(raw.box_expires_in ?? '30m'), sendScreenshots: raw.send_screenshots !== false, screenshotsInPrompt: screenshotsInPrompt(raw) };
}

export class GBoxTasks implements EnvironmentFactory {
  readonly name = 'gbox';

  get sendsImages(): boolean {
    return this.options.sendScreenshots;
  }

  get imagesInPrompt(): number {
    return this.options.screenshotsInPrompt;
  }

  private readonly sdk: GboxSDK;

  constructor(private readonly seed: number, private readonly options: GBoxEnvOptions, private readonly blobs: BlobStore, private readonly logger?: Logger) {
    this.sdk = new GboxSDK({ apiKey: options.apiKey, ...(options.baseUrl ? { baseURL: options.baseUrl } : {}) });
  }

  task(split: Split, index: number): TaskSpec {
    const pool = this.options.tasks.filter((t) => t.split === split);
    const list = pool.length > 0 ? pool : this.options.tasks;
    const t = list[(index + this.seed) % list.length]!;
    return { id: `gbox.${t.id}`, family: `gbox.${this.options.boxType}`, environment: 'gbox', split, params: { ...t, box_type: this.options.boxType } };
  }

  async create(): Promise<Environment> {
    return new GBoxEnvironment(this.sdk, this.blobs, this.options, this.logger);
  }

  async close(): Promise<void> {}
}

type Box = AndroidBoxOperator | LinuxBoxOperator;

const SYSTEM = `You operate a device through screenshots. Each turn you see the task and the current screen.
${ACTION_HELP}`;

export class GBoxEnvironment implements Environment {
  private box: Box | undefined;
  private task: GBoxTask | undefined;

  constructor(private readonly sdk: GboxSDK, private readonly blobs: BlobStore, private readonly options: GBoxEnvOptions, private readonly logger?: Logger) {}

  async reset(task: TaskSpec): Promise<ResetResult> {
    await this.close();
    this.task = task.params as unknown as GBoxTask;
    this.box = await this.call<Box>('create a box', () =>
      this.options.boxType === 'android'
        ? this.sdk.create({ type: 'android', wait: true, config: { expiresIn: this.options.boxExpiresIn } })
        : this.sdk.create({ type: 'linux', wait: true, config: { expiresIn: this.options.boxExpiresIn } }));
    if (this.task.setup) await this.call('run the task setup', () => this.box!.command(this.task!.setup!));
    return { system: SYSTEM, observation: await this.observe(), instanceId: this.box.id };
  }

  async step(reply: string): Promise<StepResult> {
    let action: ComputerAction;
    try {
      action = parseAction(reply);
    } catch (err) {
      if (!(err instanceof MalformedActionError)) throw err;
      return { action: null, parseError: err.message, observation: await this.observe(), done: false };
    }
    const box = this.requireBox();
    switch (action.type) {
      case 'click':
        await this.call('click', () => box.action.click({ x: action.x, y: action.y }));
        break;
      case 'type':
        await this.call('type', () => box.action.type({ text: action.text }));
        break;
      case 'key':
        await this.call('press a key', () => box.action.press({ keys: action.key.split('+') }));
        break;
      case 'scroll':
        await this.call('scroll', () => box.action.scroll({ x: 360, y: 640, scrollX: 0, scrollY: action.dy }));
        break;
      case 'done':
        break;
    }
    return { action: actionRecord(action), parseError: null, observation: await this.observe(), done: action.type === 'done' };
  }

  async reward(): Promise<RewardResult> {
    const task = this.task!;
    const result = await this.call('run the task check', () => this.requireBox().command(task.check));
    const success = result.exitCode === 0 && new RegExp(task.expect).test(result.stdout);
    return { value: success ? 1 : 0, components: { success: success ? 1 : 0 }, success, source: 'gbox:check' };
  }

  async close(): Promise<void> {
    const box = this.box;
    this.box = undefined;
    if (box) await this.sdk.delete(box.id).catch((err: unknown) => this.logger?.warn({ box: box.id, err: (err as Error).message }, 'deleting a GBox box failed; it expires by itself'));
  }

  private requireBox(): Box {
    if (!this.box) throw new ProducerError('TRAJ_E_ENV', 'the GBox environment was used before reset()');
    return this.box;
  }

  private async observe(): Promise<Observation> {
    const shot = await this.call('take a screenshot', () => this.requireBox().action.screenshot({ outputFormat: 'base64' }));
    const bytes = await screenshotBytes(shot.uri);
    const { width, height, mediaType } = screenshotSize(bytes);
    const stored = await this.blobs.put(bytes, mediaType);
    return { text: `Task: ${this.task!.instruction}\n(screen ${width}x${height}: see the screenshot)`, image: { ...stored, width, height, bytes } };
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof ProducerError) throw err;
      const status = (err as { status?: number }).status;
      throw new ProducerError('TRAJ_E_ENV', `GBox: could not ${what}: ${(err as Error).message}`, {
        cause: err,
        retriable: status === undefined || status >= 500 || status === 429,
        hint: status === 401 || status === 403 ? 'GBOX_API_KEY was refused: check the key' : 'check GBox status and your quota; the episode is recorded as an error',
      });
    }
  }
}

/** GBox answers a data: URI for base64 output, or a URL to fetch. */
async function screenshotBytes(uri: string): Promise<Buffer> {
  const data = /^data:[^;,]+;base64,(.*)$/s.exec(uri);
  if (data) return Buffer.from(data[1]!, 'base64');
  const res = await fetch(uri, { signal: AbortSignal.timeout(30_000) });
  if (!res.ok) throw new ProducerError('TRAJ_E_ENV', `GBox: screenshot download failed (HTTP ${res.status}) from ${uri}`, { retriable: true });
  return Buffer.from(await res.arrayBuffer());
}

/** Width, height and media type from the screenshot's own header; refuses anything but PNG or JPEG. */
export function screenshotSize(bytes: Buffer): ImageSize {
  try {
    return imageSize(bytes);
  } catch (err) {
    throw new ProducerError('TRAJ_E_ENV', `GBox: the screenshot is not an image: ${(err as Error).message}`, { cause: err });
  }
}
