/**
 * The conversation of one episode: what is sent to the policy, and what a Turn event stores.
 *
 * With `sendImages` (vision models, env_options.send_screenshots), an observation's screenshot
 * goes into the request as an OpenAI/vLLM `image_url` part (a data: URI); only the newest
 * screenshot is sent (earlier ones become a text placeholder), which bounds the request and
 * vLLM's per-prompt image limit. Events never carry image bytes: in the stored prompt every image
 * is `{"type":"image_ref","sha256":...}`, naming the blob in the store.
 */
import type { Observation } from './environment.js';

export type ContentPart =
  | { type: 'text'; text: string }
  | { type: 'image_url'; image_url: { url: string } };

export interface PolicyMessage {
  role: 'system' | 'user' | 'assistant';
  content: string | ContentPart[];
}

interface Entry {
  role: PolicyMessage['role'];
  text: string;
  image?: { sha256: string; dataUri: string };
}

export const OMITTED_IMAGE = '[earlier screenshot omitted]';

export class Conversation {
  private readonly entries: Entry[] = [];

  constructor(private readonly sendImages: boolean) {}

  get length(): number {
    return this.entries.length;
  }

  add(role: PolicyMessage['role'], text: string, observation?: Observation): void {
    const bytes = observation?.image?.bytes;
    const image = this.sendImages && bytes ? { sha256: observation.image!.sha256, dataUri: `data:${observation.image!.mediaType};base64,${bytes.toString('base64')}` } : undefined;
    this.entries.push({ role, text, image });
  }

  /** The messages to send now: every message, with only the newest image attached. */
  request(): PolicyMessage[] {
    let last = -1;
    this.entries.forEach((e, i) => {
      if (e.image) last = i;
    });
    return this.entries.map((e, i) => {
      if (!e.image) return { role: e.role, content: e.text };
      const image: ContentPart = i === last ? { type: 'image_url', image_url: { url: e.image.dataUri } } : { type: 'text', text: OMITTED_IMAGE };
      return { role: e.role, content: [image, { type: 'text', text: e.text }] };
    });
  }

  /** Messages from index `from` on, as a Turn stores them (JSON; images as image_ref). */
  stored(from: number): string {
    return JSON.stringify(this.entries.slice(from).map((e) => (e.image
      ? { role: e.role, content: [{ type: 'image_ref', sha256: e.image.sha256 }, { type: 'text', text: e.text }] }
      : { role: e.role, content: e.text })));
  }
}
