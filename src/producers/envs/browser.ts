/**
 * The browser computer-use environment: playwright-core driving Debian's `chromium` on the task
 * pages in ../tasks/browser-pages.ts. One browser process per producer; each episode gets its own
 * browser context (cookies, storage and page state are not shared between episodes).
 *
 * Observation: a PNG screenshot of the viewport, stored by content hash in the blob store and
 * cited from the Turn event, plus the page's text (instruction and visible elements with the
 * centre coordinates a click needs). Actions: click / type / key / scroll / done (../actions.ts);
 * a malformed reply is not executed and the model is told what was wrong. The episode ends when
 * the page reaches an end state (it says so in `window.__ts.finished`) or on done(); the reward
 * is the page's own check.
 *
 * Answer families (read_digit): the reply is the answer, handed to the page as it is
 * (`window.__ts.answer(reply)`); the episode ends after that one turn, and the page judges it.
 * A wrong answer earns `wrong_answer_reward` (default 0), as the text tasks' wrong_digit_reward.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import type { BlobStore } from '../../storage/blob-store.js';
import { imageSize } from '../../storage/image-size.js';
import type { Logger } from '../../util/logger.js';
import { ACTION_HELP, actionRecord, MalformedActionError, parseAction, type ComputerAction } from '../actions.js';
import { screenshotsInPrompt, type Environment, type EnvironmentFactory, type Observation, type ResetResult, type RewardResult, type Split, type StepResult, type TaskSpec } from '../environment.js';
import { ProducerError } from '../errors.js';
import { hashSeed } from '../../util/random.js';
import { ANSWER_SYSTEM, BROWSER_FAMILIES, DESCRIBE_PAGE, isAnswerTask, PAGE_FAMILIES, pageTaskParams, renderTaskPage, VIEWPORT, type PageFamily, type PageTaskParams } from '../tasks/browser-pages.js';

export interface BrowserEnvOptions {
  /** Default: the action families (BROWSER_FAMILIES); answer families (read_digit) only when named. */
  families: PageFamily[];
  /** The browser binary; default: CHROMIUM_PATH, else Debian's /usr/bin/chromium. */
  executable: string;
  /** Milliseconds an action may take in the page. */
  actionTimeoutMs: number;
  /** Put the screenshot into the prompt (vision models). */
  sendScreenshots: boolean;
  /** How many of the newest screenshots a prompt carries (screenshots_in_prompt, default 1). */
  screenshotsInPrompt: number;
  /** Answer families: the reward of a wrong answer (-1..0; no answer earns 0, a right one 1). */
  wrongAnswerReward: number;
}

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];

export function browserEnvOptions(raw: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): BrowserEnvOptions {
  const families = (raw.families ?? [...BROWSER_FAMILIES]) as unknown;
  if (!Array.isArray(families) || families.length === 0 || !families.every((f) => (PAGE_FAMILIES as readonly string[]).includes(f))) {
    throw new ProducerError('TRAJ_E_ENV_CONFIG', `rollout.env_options.families must be a non-empty list of ${PAGE_FAMILIES.join(', ')}`);
  }
  const keys = ['families', 'executable', 'action_timeout_ms', 'send_screenshots', 'screenshots_in_prompt', 'wrong_answer_reward'];
  for (const key of Object.keys(raw)) {
    if (!keys.includes(key)) {
      throw new ProducerError('TRAJ_E_ENV_CONFIG', `rollout.env_options.${key} is not a browser option`, { hint: `browser options: ${keys.join(', ')}` });
    }
  }
  const wrongAnswerReward = raw.wrong_answer_reward ?? 0;
  if (typeof wrongAnswerReward !== 'number' || wrongAnswerReward < -1 || wrongAnswerReward > 0) {
    throw new ProducerError('TRAJ_E_ENV_CONFIG', `rollout.env_options.wrong_answer_reward must be a number from -1 to 0, got ${JSON.stringify(wrongAnswerReward)}`);
  }
  const executable = (raw.executable as string | undefined) ?? env.CHROMIUM_PATH ?? CANDIDATES.find((c) => existsSync(c)) ?? CANDIDATES[0]!;
  return {
    families: families as PageFamily[], executable, actionTimeoutMs: Number(raw.action_timeout_ms ?? 5_000), sendScreenshots: raw.send_screenshots === true,
    screenshotsInPrompt: screenshotsInPrompt(raw), wrongAnswerReward,
  };
}

export class BrowserTasks implements EnvironmentFactory {
  readonly name = 'browser';

  get sendsImages(): boolean {
    return this.options.sendScreenshots;
  }

  get imagesInPrompt(): number {
    return this.options.screenshotsInPrompt;
  }

  private constructor(
    private readonly seed: number,
    private readonly options: BrowserEnvOptions,
    private readonly browser: Browser,
    private readonly blobs: BlobStore,
    private readonly logger?: Logger,
  ) {}

  /** Starts the browser; refuses with what to install when it is missing. */
  static async launch(seed: number, options: BrowserEnvOptions, blobs: BlobStore, logger?: Logger): Promise<BrowserTasks> {
    if (!existsSync(options.executable)) {
      throw new ProducerError('TRAJ_E_ENV_CONFIG', `no browser at ${options.executable}`, {
        hint: 'install Debian\'s chromium (`apt-get install -y chromium`), or set CHROMIUM_PATH / rollout.env_options.executable',
      });
    }
    try {
      const browser = await chromium.launch({
        executablePath: options.executable,
        headless: true,
        // Root (containers, CI) cannot use Chromium's sandbox; the pages are our own.
        chromiumSandbox: false,
        args: ['--disable-dev-shm-usage', '--disable-gpu', '--font-render-hinting=none'],
        // The producer owns the browser's lifetime: on SIGTERM it lets running episodes finish
        // (rollout --grace-s), then close() ends the browser. Playwright's own handlers would
        // kill chromium at the signal, failing every running episode with TRAJ_E_ENV.
        handleSIGINT: false,
        handleSIGTERM: false,
        handleSIGHUP: false,
      });
      return new BrowserTasks(seed, options, browser, blobs, logger);
    } catch (err) {
      throw new ProducerError('TRAJ_E_ENV_CONFIG', `chromium did not start: ${(err as Error).message.split('\n')[0]}`, {
        cause: err,
        hint: `run ${options.executable} --headless --no-sandbox --dump-dom about:blank by hand to see why`,
      });
    }
  }

  task(split: Split, index: number): TaskSpec {
    const seed = hashSeed(this.seed, 'browser', split, index);
    const family = this.options.families[seed % this.options.families.length]!;
    const params = pageTaskParams(family, seed);
    return { id: `browser.${family}:${split}:${this.seed}:${index}`, family: `browser.${family}`, environment: 'browser', split, params: params as unknown as Record<string, unknown> };
  }

  async create(): Promise<Environment> {
    return new BrowserEnvironment(this.browser, this.blobs, this.options, this.logger);
  }

  async close(): Promise<void> {
    await this.browser.close();
  }
}

const SYSTEM = `You operate a web page. Each turn you see the page: the task, then every visible element with the centre of its box.
${ACTION_HELP}`;

export class BrowserEnvironment implements Environment {
  private context: BrowserContext | undefined;
  private page: Page | undefined;
  private params: PageTaskParams | undefined;
  private declaredDone = false;
  /** The observation reset() returned (an answer family's page never changes after it). */
  private shown: Observation | undefined;

  constructor(private readonly browser: Browser, private readonly blobs: BlobStore, private readonly options: BrowserEnvOptions, private readonly logger?: Logger) {}

  async reset(task: TaskSpec): Promise<ResetResult> {
    await this.close();
    this.params = task.params as unknown as PageTaskParams;
    this.declaredDone = false;
    try {
      this.context = await this.browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1 });
      this.page = await this.context.newPage();
      this.page.setDefaultTimeout(this.options.actionTimeoutMs);
      await this.page.setContent(renderTaskPage(this.params), { waitUntil: 'load' });
    } catch (err) {
      throw envError('could not open the task page', err);
    }
    this.shown = await this.observe();
    return { system: isAnswerTask(this.params) ? ANSWER_SYSTEM : SYSTEM, observation: this.shown, instanceId: `context-${this.params.family}-${this.params.layoutSeed}` };
  }

  async step(reply: string): Promise<StepResult> {
    if (this.params && isAnswerTask(this.params)) return this.answer(reply);
    let action: ComputerAction;
    try {
      action = parseAction(reply);
    } catch (err) {
      if (!(err instanceof MalformedActionError)) throw err;
      // Not executed; the model sees the error and the unchanged page.
      return { action: null, parseError: err.message, observation: await this.observe(), done: false };
    }
    await this.execute(action);
    const finished = action.type === 'done' || (await this.pageFinished());
    return { action: actionRecord(action), parseError: null, observation: await this.observe(), done: finished };
  }

  /** An answer family's one turn: the page records the reply's answer and the episode ends. */
  private async answer(reply: string): Promise<StepResult> {
    const page = this.requirePage();
    let answered: number | null;
    try {
      answered = (await page.evaluate((r) => (window as unknown as { __ts: { answer(r: string): number | null } }).__ts.answer(r), reply)) ?? null;
    } catch (err) {
      throw envError('the page could not take the answer', err);
    }
    const action = answered === null ? null : { type: 'answer', args_json: JSON.stringify({ digit: answered }) };
    // The page does not change when it takes an answer: the reset's screenshot is the final one
    // (one screenshot an episode instead of two, on the CPU the producer shares).
    return { action, parseError: answered === null ? 'no digit in the reply' : null, observation: this.shown ?? (await this.observe()), done: true };
  }

  async reward(): Promise<RewardResult> {
    const page = this.requirePage();
    try {
      const result = (await page.evaluate('window.__ts.check()')) as { success: boolean; wrong?: boolean; detail: string };
      const success = result.success ? 1 : 0;
      if (result.wrong === undefined) return { value: success, components: { success }, success: result.success, source: `page:${this.params!.family}` };
      // Answer families: a wrong answer may cost more than none (see wrong_answer_reward).
      const wrong = result.wrong ? 1 : 0;
      return { value: success + this.options.wrongAnswerReward * wrong, components: { success, wrong }, success: result.success, source: `page:${this.params!.family}` };
    } catch (err) {
      throw envError('the page could not judge the episode', err);
    }
  }

  async close(): Promise<void> {
    const context = this.context;
    this.context = this.page = undefined;
    this.shown = undefined;
    await context?.close().catch((err: unknown) => this.logger?.warn({ err: (err as Error).message }, 'closing a browser context failed'));
  }

  private requirePage(): Page {
    if (!this.page) throw new ProducerError('TRAJ_E_ENV', 'the browser environment was used before reset()');
    return this.page;
  }

  private async execute(action: ComputerAction): Promise<void> {
    const page = this.requirePage();
    try {
      switch (action.type) {
        case 'click':
          await page.mouse.click(action.x, action.y);
          break;
        case 'type':
          await page.keyboard.type(action.text);
          break;
        case 'key':
          await page.keyboard.press(action.key);
          break;
        case 'scroll':
          await page.mouse.wheel(0, action.dy);
          break;
        case 'done':
          this.declaredDone = true;
          break;
      }
    } catch (err) {
      // An unknown key name is the model's mistake; anything else is the browser's.
      if (action.type === 'key' && /Unknown key/i.test((err as Error).message)) {
        throw new MalformedActionError(`key(...): ${JSON.stringify(action.key)} is not a key playwright knows (e.g. "Enter", "Tab", "Control+A")`);
      }
      throw envError(`the ${action.type} action failed`, err);
    }
  }

  private async pageFinished(): Promise<boolean> {
    return Boolean(await this.requirePage().evaluate('window.__ts.finished'));
  }

  private async observe(): Promise<Observation> {
    const page = this.requirePage();
    try {
      const [png, text] = await Promise.all([page.screenshot({ type: 'png' }), page.evaluate(DESCRIBE_PAGE) as Promise<string>]);
      const stored = await this.blobs.put(png, 'image/png');
      // The PNG's own size, not the viewport's: a device scale factor would make them differ.
      const { width, height } = imageSize(png);
      return { text: this.declaredDone ? `${text}\n(you declared the task done)` : text, image: { ...stored, width, height, bytes: png } };
    } catch (err) {
      if (err instanceof ProducerError) throw err;
      throw envError('could not observe the page', err);
    }
  }
}

function envError(what: string, err: unknown): ProducerError {
  return new ProducerError('TRAJ_E_ENV', `browser: ${what}: ${(err as Error).message.split('\n')[0]}`, {
    cause: err,
    retriable: true,
    hint: 'the browser may have crashed or be out of memory; the next episode starts a fresh context',
  });
}
