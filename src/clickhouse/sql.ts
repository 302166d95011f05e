/**
 * Building SQL text safely. ClickHouse 18.16 has no `{name:Type}` query parameters, so values
 * are written as literals, and every literal goes through these functions: never paste a value
 * into SQL any other way.
 */

/** Characters that get a backslash escape inside a quoted ClickHouse string or identifier. */
const ESCAPES: Record<string, string> = {
  '\\': '\\\\',
  "'": "\\'",
  '`': '\\`',
  '\0': '\\0',
  '\b': '\\b',
  '\f': '\\f',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
};
const NEEDS_ESCAPE = /[\\'`\0\b\f\n\r\t]/g;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * A ClickHouse string literal: `'...'` with backslash escapes (the form ClickHouse's own
 * parser reads on every version). Lone UTF-16 surrogates cannot travel as UTF-8 and are
 * refused rather than silently changed.
 */
export function quoteString(value: string): string {
  if (LONE_SURROGATE.test(value)) throw new TypeError('string holds a lone UTF-16 surrogate; it cannot be sent to ClickHouse as UTF-8');
  return `'${value.replace(NEEDS_ESCAPE, (c) => ESCAPES[c]!)}'`;
}

/** A back-quoted identifier (database, table, column), for names that come from users. */
export function quoteIdentifier(name: string): string {
  if (name === '') throw new TypeError('an identifier cannot be empty');
  if (LONE_SURROGATE.test(name)) throw new TypeError('identifier holds a lone UTF-16 surrogate');
  return `\`${name.replace(NEEDS_ESCAPE, (c) => ESCAPES[c]!)}\``;
}

/** A numeric literal; refuses NaN, infinities and non-integers where an integer is asked for. */
export function quoteInteger(value: number | bigint): string {
  if (typeof value === 'bigint') return value.toString();
  if (!Number.isSafeInteger(value)) throw new TypeError(`${value} is not a safe integer`);
  return String(value);
}
