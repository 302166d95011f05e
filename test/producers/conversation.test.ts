/** What an episode sends to the policy and what its Turn events store, with and without screenshots. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Conversation, OMITTED_IMAGE } from '../../src/producers/conversation.js';
import type { Observation } from '../../src/producers/environment.js';
import { sha256Hex } from '../../src/storage/blob-store.js';

function shot(bytes: string): Observation {
  const b = Buffer.from(bytes);
  return { text: `screen ${bytes}`, image: { sha256: sha256Hex(b), uri: 'file:///x', byteSize: b.length, mediaType: 'image/png', width: 1, height: 1, bytes: b } };
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
});

test('text-only prompts ignore screenshots', () => {
  const c = new Conversation(false);
  c.add('user', 'task', shot('first'));
  assert.deepEqual(c.request(), [{ role: 'user', content: 'task' }]);
  assert.deepEqual(JSON.parse(c.stored(0)), [{ role: 'user', content: 'task' }]);
});
