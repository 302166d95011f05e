/**
 * The conversation of one episode: what is sent to the policy, and what a Turn event stores.
 *
 * With `sendImages` (vision models, env_options.send_screenshots), an observation's screenshot
 * goes into the request as an OpenAI/vLLM `image_url` part (a data: URI). Only the newest
 * `keepImages` screenshots are sent (env_options.screenshots_in_prompt, default 1); older ones
 * become a text placeholder, which bounds the request and vLLM's per-prompt image limit. Events
 * never carry image bytes: in the stored prompt every image is `{"type":"image_ref","sha256":...}`,
 * naming the blob in the store, and `promptImages()` lists the images a request carried, in
 * prompt order, for the Turn's `prompt_images`.
 */
import type { PromptImage } from '../schemas/index.js';
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
  image?: { ref: PromptImage; dataUri: string };
}

export const OMITTED_IMAGE = '[earlier screenshot omitted]';

export class Conversation {
  private readonly entries: Entry[] = [];

  /** `keepImages`: how many of the newest screenshots a request carries (at least 1). */
  constructor(private readonly sendImages: boolean, private readonly keepImages = 1) {
    if (!Number.isInteger(keepImages) || keepImages < 1) throw new RangeError(`keepImages must be a positive integer, got ${keepImages}`);
  }

  get length(): number {
    return this.entries.length;
  }

  add(role: PolicyMessage['role'], text: string, observation?: Observation): void {
    const img = observation?.image;
    const image = this.sendImages && img?.bytes
      ? {
          ref: { sha256: img.sha256, media_type: img.mediaType, byte_size: img.byteSize, width: img.width, height: img.height },
          dataUri: `data:${img.mediaType};base64,${img.bytes.toString('base64')}`,
        }
      : undefined;
    this.entries.push({ role, text, image });
  }

  /** The messages to send now: every message, with only the newest `keepImages` images attached. */
  request(): PolicyMessage[] {
    const sent = this.sentImages();
    return this.entries.map((e, i) => {
      if (!e.image) return { role: e.role, content: e.text };
      const image: ContentPart = sent.has(i) ? { type: 'image_url', image_url: { url: e.image.dataUri } } : { type: 'text', text: OMITTED_IMAGE };
      return { role: e.role, content: [image, { type: 'text', text: e.text }] };
    });
  }

  /** The images `request()` carries, in the order they appear in its messages (a Turn's prompt_images). */
  promptImages(): PromptImage[] {
    const sent = this.sentImages();
    return this.entries.flatMap((e, i) => (e.image && sent.has(i) ? [{ ...e.image.ref }] : []));
  }

  /** Messages from index `from` on, as a Turn stores them (JSON; images as image_ref). */
  stored(from: number): string {
    return JSON.stringify(this.entries.slice(from).map((e) => (e.image
      ? { role: e.role, content: [{ type: 'image_ref', sha256: e.image.ref.sha256 }, { type: 'text', text: e.text }] }
      : { role: e.role, content: e.text })));
  }

  /** Indexes of the entries whose image is sent: the newest `keepImages` that have one. */
  private sentImages(): Set<number> {
    const sent = new Set<number>();
    for (let i = this.entries.length - 1; i >= 0 && sent.size < this.keepImages; i--) if (this.entries[i]!.image) sent.add(i);
    return sent;
  }
}
