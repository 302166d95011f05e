/**
 * Text tasks for the demo and the tests: short, seeded, rewarded by rule.
 *
 * Design for learnability (the demo must see success climb from <= 20 % to >= 80 % on the tiny
 * model on a CPU): GRPO learns only from groups whose rewards differ, so the untrained model
 * must score now and then. Answers are one digit read as the first digit anywhere in a short
 * reply; a small `format` reward (the reply contains a digit) gives a signal before the first
 * correct answer; `digits` shrinks the answer set; prompts are short and of fixed shape.
 *
 * Measured (src/producers/tasks/text_learnability.py, README "Text tasks"): with the tiny model as
 * it is built today and LoRA on attention only, no task climbs near 80 %, not even a constant
 * answer: the frozen tied output head and final norm cap any one token's probability at 0.93 %.
 * The tiny model's output scale is the bottleneck, for the demo's issue to fix. See the README.
 *
 * `copy_digit` is the intended demo task; `add` needs arithmetic; `guess` is multi-turn (feedback
 * "higher"/"lower") and exercises the multi-turn path. Tasks come from (seed, split, index);
 * eval tasks are held out (a phrasing, or operand pairs, never used for training).
 */
import type { Environment, EnvironmentFactory, ResetResult, RewardResult, Split, StepResult, TaskSpec } from '../environment.js';
import { ProducerError } from '../errors.js';
import { hashSeed, mulberry32 } from '../../util/random.js';

export const TEXT_FAMILIES = ['copy_digit', 'add', 'guess'] as const;
export type TextFamily = (typeof TEXT_FAMILIES)[number];

export interface TextEnvOptions {
  families: TextFamily[];
  /** Answers are 0 .. digits-1 (2..10). */
  digits: number;
  /** Reward for a reply that contains a digit at all (shaping). */
  formatReward: number;
  /**
   * Reward added when the answer is a wrong digit (-1..0). Negative, it tells "wrong" from "no
   * answer": a policy that always answers the same digit then gets a signal from the groups of
   * the other answers, where otherwise every reward would be equal and the group dropped.
   */
  wrongDigitReward: number;
}

const SYSTEM = 'You are a helpful assistant. Answer with a single digit.';

const COPY_TRAIN = ['Reply with the digit {d}.', 'Say the digit {d}.', 'The answer is {d}. Repeat it.'];
const COPY_EVAL = ['Write the digit {d}.'];

export function textEnvOptions(raw: Record<string, unknown>): TextEnvOptions {
  const families = (raw.families ?? ['copy_digit']) as unknown;
  const digits = raw.digits ?? 10;
  const formatReward = raw.format_reward ?? 0.1;
  const wrongDigitReward = raw.wrong_digit_reward ?? 0;
  const bad = (what: string) => new ProducerError('TRAJ_E_ENV_CONFIG', `rollout.env_options.${what}`, {
    hint: `text tasks take families (${TEXT_FAMILIES.join(', ')}), digits (2-10), format_reward (0-1) and wrong_digit_reward (-1-0)`,
  });
  if (!Array.isArray(families) || families.length === 0 || !families.every((f) => (TEXT_FAMILIES as readonly string[]).includes(f))) {
    throw bad(`families must be a non-empty list of ${TEXT_FAMILIES.join(', ')}`);
  }
  if (typeof digits !== 'number' || !Number.isInteger(digits) || digits < 2 || digits > 10) throw bad('digits must be an integer 2-10');
  if (typeof formatReward !== 'number' || formatReward < 0 || formatReward > 1) throw bad('format_reward must be 0-1');
  if (typeof wrongDigitReward !== 'number' || wrongDigitReward < -1 || wrongDigitReward > 0) throw bad('wrong_digit_reward must be -1-0');
  for (const key of Object.keys(raw)) if (!['families', 'digits', 'format_reward', 'wrong_digit_reward'].includes(key)) throw bad(`${key} is not a text-task option`);
  return { families: families as TextFamily[], digits, formatReward, wrongDigitReward };
}

/** The first digit character in the reply, or null. */
export function readDigit(reply: string): number | null {
  const m = /[0-9]/.exec(reply);
  return m ? Number(m[0]) : null;
}

export class TextTasks implements EnvironmentFactory {
  readonly name = 'text';

  constructor(private readonly seed: number, private readonly options: TextEnvOptions) {}

  task(split: Split, index: number): TaskSpec {
    const rand = mulberry32(hashSeed(this.seed, split, index));
    const family = this.options.families[Math.floor(rand() * this.options.families.length)]!;
    const n = this.options.digits;
    let params: Record<string, unknown>;
    if (family === 'copy_digit') {
      const templates = split === 'train' ? COPY_TRAIN : COPY_EVAL;
      const answer = Math.floor(rand() * n);
      const template = templates[Math.floor(rand() * templates.length)]!;
      params = { prompt: template.replace('{d}', String(answer)), answer };
    } else if (family === 'add') {
      const pairs = addPairs(n, split);
      const [a, b] = pairs[Math.floor(rand() * pairs.length)]!;
      params = { prompt: `What is ${a} plus ${b}?`, answer: a + b };
    } else {
      const answer = Math.floor(rand() * n);
      params = { prompt: `I am thinking of a digit from 0 to ${n - 1}. Guess it.`, answer };
    }
    return { id: `${family}:${split}:${this.seed}:${index}`, family: `text.${family}`, environment: 'text', split, params };
  }

  async create(): Promise<Environment> {
    return new TextEnvironment(this.options);
  }

  async close(): Promise<void> {}
}

/** Operand pairs with a digit sum below n; every fifth pair (by a fixed rule) is held out for eval. */
function addPairs(n: number, split: Split): Array<[number, number]> {
  const all: Array<[number, number]> = [];
  for (let a = 0; a < n; a++) for (let b = 0; a + b < n; b++) all.push([a, b]);
  const held = (a: number, b: number) => (a * 7 + b * 3) % 5 === 0;
  const out = all.filter(([a, b]) => held(a, b) === (split === 'eval'));
  return out.length > 0 ? out : all;
}

class TextEnvironment implements Environment {
  private task: TaskSpec | undefined;
  private answer = 0;
  private solved = false;
  private answered = false;
  private turns = 0;
  private turnsWithDigit = 0;
  private lastGuess: number | null = null;

  constructor(private readonly options: TextEnvOptions) {}

  async reset(task: TaskSpec): Promise<ResetResult> {
    this.task = task;
    this.answer = Number(task.params.answer);
    this.solved = this.answered = false;
    this.turns = this.turnsWithDigit = 0;
    this.lastGuess = null;
    return { system: SYSTEM, observation: { text: String(task.params.prompt) } };
  }

  async step(reply: string): Promise<StepResult> {
    const task = this.task!;
    this.turns++;
    const guess = readDigit(reply);
    if (guess !== null) this.turnsWithDigit++;
    this.lastGuess = guess;
    const action = guess === null ? null : { type: 'answer', args_json: JSON.stringify({ digit: guess }) };
    const parseError = guess === null ? 'no digit in the reply' : null;
    if (task.family !== 'text.guess') {
      // Single-turn: the first reply is the answer, whatever it is.
      this.answered = true;
      this.solved = guess === this.answer;
      return { action, parseError, observation: { text: '' }, done: true };
    }
    if (guess === this.answer) {
      this.answered = this.solved = true;
      return { action, parseError, observation: { text: 'Correct.' }, done: true };
    }
    const hint = guess === null ? 'Answer with a single digit.' : guess < this.answer ? 'Higher.' : 'Lower.';
    return { action, parseError, observation: { text: hint }, done: false };
  }

  async reward(): Promise<RewardResult> {
    const format = this.turns > 0 ? this.turnsWithDigit / this.turns : 0;
    const correct = this.solved ? 1 : 0;
    // The episode's last answer decides: a wrong digit, not silence, earns the penalty.
    const wrong = !this.solved && this.lastGuess !== null ? 1 : 0;
    return {
      value: correct + this.options.formatReward * format + this.options.wrongDigitReward * wrong,
      components: { correct, format, wrong },
      success: this.solved,
      source: 'rule:digit_match',
    };
  }

  async close(): Promise<void> {}
}
