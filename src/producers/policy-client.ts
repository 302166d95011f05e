/**
 * The producers' client for vLLM's OpenAI-compatible chat API (and the CPU policy server that
 * stands in for it). Every call asks for what training needs: the exact prompt and completion
 * token ids (`return_token_ids`) and the behavior logprob of each sampled token (`logprobs`).
 * The `model` asked for is the newest policy version seen on `policy.versions` (or the base model
 * before the first), and the answer records which version sampled it.
 *
 * Failures: connection errors, 5xx/429 and timeouts are retried with exponential backoff and
 * jitter (inference.max_retries); what is left is a ProducerError with a code saying which.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChatCompletionRequest, ChatCompletionResponse, ChatMessage } from '../inference/vllm-api.js';
import type { PolicyMessage } from './conversation.js';
import type { Logger } from '../util/logger.js';
import { ProducerError } from './errors.js';

/** What the policy should be asked for: a served model name and its version number (0 = base). */
export interface PolicyTarget {
  model: string;
  version: number;
}

/** Anything that knows the newest policy version (the policy.versions follower, or a fixed one). */
export interface PolicySource {
  current(): PolicyTarget;
}

export function fixedPolicy(model: string, version = 0): PolicySource {
  return { current: () => ({ model, version }) };
}

export interface SamplingOptions {
  temperature: number;
  top_p: number;
  top_k?: number | null;
  max_tokens: number;
  seed?: number;
  stop?: string[];
}

/** One completion with everything a Turn event records. */
export interface PolicyCompletion {
  model: string;
  policyVersion: number;
  promptTokenIds: number[];
  completionTokenIds: number[];
  completionLogprobs: number[];
  text: string;
  finishReason: string;
  requestId: string | null;
  latencyMs: number;
  attempts: number;
}

export interface PolicyClientOptions {
  /** Inference servers (inference.api_bases); requests go round-robin, a failed attempt moves on to the next. */
  apiBases: string[];
  policy: PolicySource;
  apiKey?: string;
  timeoutMs?: number;
  maxRetries?: number;
  /** First backoff delay; doubles each retry (with jitter), capped at backoffMaxMs. */
  backoffMs?: number;
  backoffMaxMs?: number;
  logger?: Logger;
  /** Sees every successful raw answer (auditing, tests that compare events with what the server said). */
  onResponse?: (response: ChatCompletionResponse) => void;
  /**
   * Sent with every request as vLLM's per-request `mm_processor_kwargs` (vision policies:
   * `{min_pixels, max_pixels}` from inference.image_processing), so the server resizes images
   * exactly as the Turn events record, whatever its own defaults. Unset: not sent.
   */
  mmProcessorKwargs?: Record<string, number>;
}

/** Network-level failures fetch reports as TypeError with a cause carrying a code. */
function networkCode(err: unknown): string | undefined {
  const cause = (err as { cause?: { code?: string } })?.cause;
  return cause?.code ?? (err instanceof TypeError ? 'FETCH_FAILED' : undefined);
}

class RetryableAttemptError extends Error {
  constructor(readonly kind: 'unreachable' | 'timeout' | 'server', message: string) {
    super(message);
  }
}

export class PolicyClient {
  private readonly roots: string[];
  private next = 0;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;
  private readonly backoffMs: number;
  private readonly backoffMaxMs: number;

  constructor(private readonly opts: PolicyClientOptions) {
    if (opts.apiBases.length === 0) throw new ProducerError('TRAJ_E_ENV_CONFIG', 'no inference server configured', { hint: 'set inference.api_bases' });
    this.roots = opts.apiBases.map((b) => b.replace(/\/+$/, '').replace(/\/v1$/, ''));
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.maxRetries = opts.maxRetries ?? 3;
    this.backoffMs = opts.backoffMs ?? 250;
    this.backoffMaxMs = opts.backoffMaxMs ?? 5_000;
  }

  /** The policy the next request will use. */
  currentPolicy(): PolicyTarget {
    return this.opts.policy.current();
  }

  /**
   * Samples one completion. The policy version is read once, before the first attempt, so the
   * version recorded is the one whose name the request carried.
   */
  async complete(messages: PolicyMessage[], sampling: SamplingOptions, signal?: AbortSignal): Promise<PolicyCompletion> {
    const target = this.opts.policy.current();
    const request: ChatCompletionRequest = {
      model: target.model,
      // Image parts (vision models) are vLLM's OpenAI-style content lists; vllm-api.ts types text only.
      messages: messages as unknown as ChatMessage[],
      temperature: sampling.temperature,
      top_p: sampling.top_p,
      max_tokens: sampling.max_tokens,
      logprobs: true,
      return_token_ids: true,
      // Keep special tokens in the text so the text matches the token ids the trainer sees.
      skip_special_tokens: false,
      ...(sampling.top_k != null ? { top_k: sampling.top_k } : {}),
      ...(sampling.seed !== undefined ? { seed: sampling.seed } : {}),
      ...(sampling.stop ? { stop: sampling.stop } : {}),
      ...(this.opts.mmProcessorKwargs ? { mm_processor_kwargs: this.opts.mmProcessorKwargs } : {}),
    };
    const started = Date.now();
    let lastError: RetryableAttemptError | undefined;
    for (let attempt = 0; attempt <= this.maxRetries; attempt++) {
      if (attempt > 0) await this.backoff(attempt, signal);
      const root = this.roots[this.next++ % this.roots.length]!;
      try {
        const response = await this.post(root, request, signal);
        this.opts.onResponse?.(response);
        return toCompletion(response, target, Date.now() - started, attempt + 1, root);
      } catch (err) {
        if (!(err instanceof RetryableAttemptError)) throw err;
        lastError = err;
        this.opts.logger?.warn({ root, attempt: attempt + 1, reason: err.message }, 'policy request failed; retrying');
      }
    }
    throw finalError(lastError!, this.roots, this.maxRetries + 1, this.timeoutMs);
  }

  private async backoff(attempt: number, signal?: AbortSignal): Promise<void> {
    const base = Math.min(this.backoffMaxMs, this.backoffMs * 2 ** (attempt - 1));
    // Full jitter: many workers retrying the same restarted server do not arrive together.
    await sleep(base / 2 + Math.random() * (base / 2), undefined, { signal });
  }

  private async post(root: string, request: ChatCompletionRequest, signal?: AbortSignal): Promise<ChatCompletionResponse> {
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.opts.apiKey) headers.authorization = `Bearer ${this.opts.apiKey}`;
    let res: Response;
    let text: string;
    try {
      res = await fetch(`${root}/v1/chat/completions`, {
        method: 'POST',
        headers,
        body: JSON.stringify(request),
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
      text = await res.text();
    } catch (err) {
      if (signal?.aborted) throw err; // the caller gave up (deadline, shutdown): not a server failure
      if (timeout.aborted) throw new RetryableAttemptError('timeout', `no answer from ${root} within ${this.timeoutMs} ms`);
      throw new RetryableAttemptError('unreachable', `cannot reach ${root} (${networkCode(err) ?? (err as Error).message})`);
    }
    if (res.status === 429 || res.status >= 500) {
      throw new RetryableAttemptError('server', `${root} answered HTTP ${res.status}: ${errorMessage(text)}`);
    }
    if (res.status < 200 || res.status >= 300) {
      throw new ProducerError('TRAJ_E_POLICY_REJECTED', `${root} refused the request (HTTP ${res.status}): ${errorMessage(text)}`, {
        hint: res.status === 404 ? `the server does not serve model ${JSON.stringify(request.model)}; check model.name or the adapter publication` : 'check the request parameters in the rollout section',
      });
    }
    try {
      return JSON.parse(text) as ChatCompletionResponse;
    } catch {
      throw new ProducerError('TRAJ_E_POLICY_BAD_RESPONSE', `${root} answered with something that is not JSON: ${text.slice(0, 200)}`);
    }
  }
}

function errorMessage(text: string): string {
  try {
    const body = JSON.parse(text) as { error?: { message?: string } };
    return body.error?.message ?? text.slice(0, 300);
  } catch {
    return text.slice(0, 300);
  }
}

function finalError(last: RetryableAttemptError, roots: string[], attempts: number, timeoutMs: number): ProducerError {
  const where = roots.join(', ');
  if (last.kind === 'timeout') {
    return new ProducerError('TRAJ_E_POLICY_TIMEOUT', `the policy server did not answer within ${timeoutMs} ms, ${attempts} attempts (${last.message})`, {
      retriable: true,
      hint: 'the server may be overloaded: lower rollout.concurrency or raise inference.request_timeout_s',
    });
  }
  if (last.kind === 'unreachable') {
    return new ProducerError('TRAJ_E_POLICY_UNREACHABLE', `the policy server is unreachable after ${attempts} attempts: ${last.message}`, {
      retriable: true,
      hint: `start vLLM (or the CPU policy server) at ${where}, or fix inference.api_bases`,
    });
  }
  return new ProducerError('TRAJ_E_POLICY_UNREACHABLE', `the policy server kept failing after ${attempts} attempts: ${last.message}`, {
    retriable: true,
    hint: `read the inference server's log at ${where}`,
  });
}

function toCompletion(res: ChatCompletionResponse, target: PolicyTarget, latencyMs: number, attempts: number, root: string): PolicyCompletion {
  const choice = res.choices?.[0];
  const tokenIds = choice?.token_ids;
  const logprobs = choice?.logprobs?.content;
  if (!choice || !Array.isArray(res.prompt_token_ids) || !Array.isArray(tokenIds) || !Array.isArray(logprobs)) {
    throw new ProducerError('TRAJ_E_POLICY_BAD_RESPONSE', `${root} answered without prompt_token_ids, token_ids or logprobs`, {
      hint: 'use vLLM >= 0.10.2 (return_token_ids) or the CPU policy server; training needs the exact sampled tokens',
    });
  }
  if (logprobs.length !== tokenIds.length) {
    throw new ProducerError('TRAJ_E_POLICY_BAD_RESPONSE', `${root} returned ${logprobs.length} logprobs for ${tokenIds.length} completion tokens`);
  }
  return {
    model: target.model,
    policyVersion: target.version,
    promptTokenIds: res.prompt_token_ids,
    completionTokenIds: tokenIds,
    // vLLM clamps at -9999; the schema stores float32, which holds that fine.
    completionLogprobs: logprobs.map((l) => l.logprob),
    text: choice.message.content ?? '',
    finishReason: choice.finish_reason ?? 'unknown',
    requestId: res.id ?? null,
    latencyMs,
    attempts,
  };
}
