/**
 * The computer-use action language the browser and GBox environments share, parsed from the
 * model's completion:
 *
 *   click(x=120, y=340)      left click at page pixels
 *   type(text="hello")       type into the focused element (JSON string escapes)
 *   key(key="Enter")         press a key or chord ("Control+A")
 *   scroll(dy=300)           scroll by pixels (dy > 0: down); or scroll(direction=down)
 *   done()                   the task is finished
 *
 * The first call in the text counts (a model may think aloud before it). Anything that is not
 * one of these with the right arguments is a MalformedAction with a message that says what was
 * wrong and what is expected: it is recorded on the Turn and shown to the model as feedback.
 */
import { ProducerError } from './errors.js';

export type ComputerAction =
  | { type: 'click'; x: number; y: number }
  | { type: 'type'; text: string }
  | { type: 'key'; key: string }
  | { type: 'scroll'; dy: number }
  | { type: 'done' };

export const ACTION_HELP =
  'Reply with exactly one action: click(x=<int>, y=<int>), type(text="<text>"), key(key="<Key>"), scroll(dy=<int>) or done().';

export class MalformedActionError extends ProducerError {
  constructor(message: string) {
    super('TRAJ_E_ACTION_MALFORMED', message, { hint: ACTION_HELP });
  }
}

const NAMES = ['click', 'type', 'key', 'scroll', 'done'] as const;
const CALL = /\b(click|type|key|scroll|done)\s*\(/;

/** Parses the first action in `text`; throws MalformedActionError. */
export function parseAction(text: string): ComputerAction {
  const m = CALL.exec(text);
  if (!m) {
    const other = /\b([a-z_]+)\s*\(/i.exec(text);
    throw new MalformedActionError(other
      ? `unknown action ${JSON.stringify(other[1])}; expected one of ${NAMES.join(', ')}`
      : `no action found in the reply ${JSON.stringify(text.slice(0, 80))}`);
  }
  const name = m[1] as (typeof NAMES)[number];
  const args = parseArgs(text, m.index + m[0].length, name);
  return build(name, args);
}

type ArgValue = number | string;

/** Reads `k=v, k=v)` from `start`; values are numbers, JSON strings or bare words. */
function parseArgs(text: string, start: number, name: string): Map<string, ArgValue> {
  const args = new Map<string, ArgValue>();
  let i = start;
  const skipSpace = () => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  skipSpace();
  if (text[i] === ')') return args;
  while (true) {
    skipSpace();
    const key = /^[a-z_][a-z0-9_]*/i.exec(text.slice(i))?.[0];
    if (!key) throw new MalformedActionError(`${name}(...): expected an argument name at ${JSON.stringify(text.slice(i, i + 20))}`);
    i += key.length;
    skipSpace();
    if (text[i] !== '=') throw new MalformedActionError(`${name}(...): argument ${key} needs "=value"`);
    i++;
    skipSpace();
    let value: ArgValue;
    if (text[i] === '"' || text[i] === "'") {
      const end = closingQuote(text, i);
      if (end < 0) throw new MalformedActionError(`${name}(...): the string for ${key} is not closed`);
      const raw = text.slice(i, end + 1);
      try {
        value = raw.startsWith("'") ? raw.slice(1, -1) : (JSON.parse(raw) as string);
      } catch {
        throw new MalformedActionError(`${name}(...): ${key} has a bad string escape: ${raw.slice(0, 40)}`);
      }
      i = end + 1;
    } else {
      const word = /^[^,)\s]+/.exec(text.slice(i))?.[0];
      if (!word) throw new MalformedActionError(`${name}(...): ${key} has no value`);
      i += word.length;
      value = /^-?\d+(\.\d+)?$/.test(word) ? Number(word) : word;
    }
    if (args.has(key)) throw new MalformedActionError(`${name}(...): ${key} is given twice`);
    args.set(key, value);
    skipSpace();
    if (text[i] === ',') {
      i++;
      continue;
    }
    if (text[i] === ')') return args;
    throw new MalformedActionError(`${name}(...): expected "," or ")" ${i >= text.length ? 'but the reply ended' : `at ${JSON.stringify(text.slice(i, i + 20))}`}`);
  }
}

function closingQuote(text: string, open: number): number {
  const quote = text[open];
  for (let j = open + 1; j < text.length; j++) {
    if (text[j] === '\\') j++;
    else if (text[j] === quote) return j;
  }
  return -1;
}

function build(name: (typeof NAMES)[number], args: Map<string, ArgValue>): ComputerAction {
  const allow = (...keys: string[]) => {
    for (const k of args.keys()) if (!keys.includes(k)) throw new MalformedActionError(`${name}(...) takes ${keys.length ? keys.join(', ') : 'no arguments'}, not ${k}`);
  };
  const int = (key: string): number => {
    const v = args.get(key);
    if (v === undefined) throw new MalformedActionError(`${name}(...) needs ${key}=<integer>`);
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new MalformedActionError(`${name}(...): ${key} must be a number, got ${JSON.stringify(v)}`);
    return Math.round(v);
  };
  const str = (key: string): string => {
    const v = args.get(key);
    if (v === undefined) throw new MalformedActionError(`${name}(...) needs ${key}="<text>"`);
    return String(v);
  };
  switch (name) {
    case 'click':
      allow('x', 'y');
      return { type: 'click', x: int('x'), y: int('y') };
    case 'type':
      allow('text');
      return { type: 'type', text: str('text') };
    case 'key': {
      allow('key');
      const key = str('key');
      if (!/^[A-Za-z0-9+]+$/.test(key)) throw new MalformedActionError(`key(...): ${JSON.stringify(key)} is not a key name (e.g. "Enter", "Tab", "Control+A")`);
      return { type: 'key', key };
    }
    case 'scroll': {
      allow('dy', 'direction');
      if (args.has('direction')) {
        const dir = str('direction');
        if (dir !== 'up' && dir !== 'down') throw new MalformedActionError(`scroll(...): direction must be up or down, got ${JSON.stringify(dir)}`);
        return { type: 'scroll', dy: dir === 'down' ? 300 : -300 };
      }
      return { type: 'scroll', dy: int('dy') };
    }
    case 'done':
      allow();
      return { type: 'done' };
  }
}

/** The action as the Turn event stores it: a type and a JSON object of arguments. */
export function actionRecord(action: ComputerAction): { type: string; args_json: string } {
  const { type, ...args } = action;
  return { type, args_json: JSON.stringify(args) };
}
