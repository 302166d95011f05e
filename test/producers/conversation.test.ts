/** What an episode sends to the policy and what its Turn events store, with and without screenshots. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Conversation, OMITTED_IMAGE } from '../../src/producers/conversation.js';
import type { Observation } from '../../src/producers/environment.js';
import { sha256Hex } from '../../src/storage/blob-store.js';

function shot(bytes: string, width = 1, height = 1): Observation {
  const b = Buffer.from(bytes);
  return { text: `screen ${bytes}`, image: { sha256: sha256Hex(b), uri: 'file:///x', byteSize: b.length, mediaType: 'image/png', width, height, bytes: b } };
}

test('vision prompts carry only the newest screenshot; stored prompts cite images by hash, never bytes', () => {
  const c = new Conversation(true);
  c.add('system', 'rules');
  c.add('user', 'task', shot('first'));
  c.add('assistant', 'click(x=1, y=2)');
  c.add('user', 'next', shot('second'));
  const request = c.request();
  assert.deepEqual(request[0], { role: 'system', content: 'rules' });
  assert.deepEqual(request[1]!.content, [{ type: 'text', text: OMITTED_IMAGE }, { type: 'text', text: 'task' }]);
  assert.deepEqual(request[3]!.content, [{ type: 'image_url', image_url: { url: `data:image/png;base64,${Buffer.from('second').toString('base64')}` } }, { type: 'text', text: 'next' }]);
  const stored = c.stored(2);
  assert.deepEqual(JSON.parse(stored), [
    { role: 'assistant', content: 'click(x=1, y=2)' },
    { role: 'user', content: [{ type: 'image_ref', sha256: sha256Hex(Buffer.from('second')) }, { type: 'text', text: 'next' }] },
  ]);
  assert.ok(!c.stored(0).includes('base64'), 'no image bytes in events');
  assert.deepEqual(c.promptImages(), [{ sha256: sha256Hex(Buffer.from('second')), media_type: 'image/png', byte_size: 6, width: 1, height: 1 }], 'the Turn records only the image sent');
});

test('with screenshots_in_prompt N the newest N screenshots are sent, and recorded in prompt order', () => {
  const c = new Conversation(true, 2);
  c.add('system', 'rules');
  c.add('user', 'task', shot('first', 640, 480));
  c.add('assistant', 'click(x=1, y=2)');
  c.add('user', 'next', shot('second', 640, 481));
  assert.deepEqual(c.promptImages().map((i) => [i.sha256, i.height]), [[sha256Hex(Buffer.from('first')), 480], [sha256Hex(Buffer.from('second')), 481]]);
  assert.equal(c.request().filter((m) => Array.isArray(m.content) && m.content[0]!.type === 'image_url').length, 2);
  c.add('assistant', 'done()');
  c.add('user', 'last', shot('third', 640, 482));
  const request = c.request();
  assert.deepEqual((request[1]!.content as Array<{ type: string }>)[0], { type: 'text', text: OMITTED_IMAGE }, 'the oldest falls out');
  // The images in the order the request's image_url parts carry them.
  const sent = request.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).flatMap((p) => (p.type === 'image_url' ? [p.image_url.url] : []));
  assert.deepEqual(sent, ['second', 'third'].map((s) => `data:image/png;base64,${Buffer.from(s).toString('base64')}`));
  assert.deepEqual(c.promptImages().map((i) => i.sha256), ['second', 'third'].map((s) => sha256Hex(Buffer.from(s))));
});

test('text-only prompts ignore screenshots', () => {
  const c = new Conversation(false);
  c.add('user', 'task', shot('first'));
  assert.deepEqual(c.request(), [{ role: 'user', content: 'task' }]);
  assert.deepEqual(JSON.parse(c.stored(0)), [{ role: 'user', content: 'task' }]);
  assert.deepEqual(c.promptImages(), []);
});
