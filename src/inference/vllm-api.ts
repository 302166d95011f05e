/**
 * Types and thin calls for the part of vLLM's OpenAI-compatible API trajstore uses. They fit vLLM
 * and the CPU policy server alike (the contract tests in test/contract/ check that they do).
 *
 * The shapes follow vLLM: `return_token_ids: true` adds the top-level `prompt_token_ids` and each
 * choice's `token_ids`; `return_tokens_as_token_ids: true` writes logprob tokens as
 * `token_id:<id>`; errors are `{ error: { message, type, param, code } }`.
 */

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
}

export interface ChatCompletionRequest {
  model?: string;
  messages: ChatMessage[];
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  n?: number;
  seed?: number;
  stop?: string | string[];
  logprobs?: boolean;
  top_logprobs?: number;
  return_token_ids?: boolean;
  return_tokens_as_token_ids?: boolean;
  skip_special_tokens?: boolean;
  ignore_eos?: boolean;
  min_tokens?: number;
  chat_template_kwargs?: Record<string, unknown>;
  [extra: string]: unknown;
}

export interface TopLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
}

export interface TokenLogprob extends TopLogprob {
  top_logprobs: TopLogprob[];
}

export interface ChatChoice {
  index: number;
  message: { role: 'assistant'; content: string | null; [extra: string]: unknown };
  logprobs: { content: TokenLogprob[] | null } | null;
  finish_reason: 'stop' | 'length' | string | null;
  /** vLLM: the stop string or stop token id that ended the sequence; null for EOS or length. */
  stop_reason: string | number | null;
  token_ids?: number[] | null;
}

export interface ChatCompletionResponse {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: ChatChoice[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number; [extra: string]: unknown };
  prompt_token_ids?: number[] | null;
}

export interface ModelCard {
  id: string;
  object: 'model';
  owned_by: string;
  root: string | null;
  parent: string | null;
  max_model_len: number | null;
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: number };
}

/** A non-2xx answer, with vLLM's error body when there was one. */
export class PolicyApiError extends Error {
  constructor(readonly status: number, readonly body: ErrorBody | undefined, readonly text: string) {
    super(`HTTP ${status}: ${body?.error.message ?? text}`);
    this.name = 'PolicyApiError';
  }
}

export interface PolicyApi {
  readonly baseUrl: string;
  health(): Promise<boolean>;
  models(): Promise<ModelCard[]>;
  chat(request: ChatCompletionRequest): Promise<ChatCompletionResponse>;
  /** vLLM answers a plain-text line, `Success: LoRA adapter 'NAME' added successfully.` */
  loadAdapter(name: string, path: string, options?: { loadInplace?: boolean }): Promise<string>;
  unloadAdapter(name: string): Promise<string>;
  /** vLLM's `/detokenize` (special tokens kept). */
  detokenize(tokens: number[], model?: string): Promise<string>;
}

export function policyApi(baseUrl: string, options: { timeoutMs?: number } = {}): PolicyApi {
  const root = baseUrl.replace(/\/+$/, '').replace(/\/v1$/, '');
  const timeoutMs = options.timeoutMs ?? 600_000;
  async function call(method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number; text: string }> {
    const res = await fetch(`${root}${path}`, {
      method,
      headers: body === undefined ? undefined : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    if (res.status < 200 || res.status >= 300) throw new PolicyApiError(res.status, parseError(text), text);
    return { status: res.status, text };
  }
  return {
    baseUrl: root,
    async health() {
      try {
        return (await call('GET', '/health')).status === 200;
      } catch {
        return false;
      }
    },
    async models() {
      return (JSON.parse((await call('GET', '/v1/models')).text) as { data: ModelCard[] }).data;
    },
    async chat(request) {
      return JSON.parse((await call('POST', '/v1/chat/completions', request)).text) as ChatCompletionResponse;
    },
    async loadAdapter(name, path, opts = {}) {
      const body: Record<string, unknown> = { lora_name: name, lora_path: path };
      if (opts.loadInplace !== undefined) body.load_inplace = opts.loadInplace;
      return (await call('POST', '/v1/load_lora_adapter', body)).text;
    },
    async unloadAdapter(name) {
      return (await call('POST', '/v1/unload_lora_adapter', { lora_name: name })).text;
    },
    async detokenize(tokens, model) {
      const body = model === undefined ? { tokens } : { model, tokens };
      return (JSON.parse((await call('POST', '/detokenize', body)).text) as { prompt: string }).prompt;
    },
  };
}

function parseError(text: string): ErrorBody | undefined {
  try {
    const parsed = JSON.parse(text) as Partial<ErrorBody>;
    return parsed && typeof parsed.error === 'object' && parsed.error !== null ? (parsed as ErrorBody) : undefined;
  } catch {
    return undefined;
  }
}
