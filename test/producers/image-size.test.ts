/** Image sizes read from the bytes' own headers (PNG IHDR, JPEG start of frame), as Turns record them. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { imageSize, ImageSizeError } from '../../src/storage/image-size.js';
import { solidPng } from './fake-gbox-api.js';

/** A minimal JPEG header: SOI, an APP0 segment, a DQT segment, then SOFn with the size. */
function jpegHeader(width: number, height: number, sof = 0xc0): Buffer {
  const seg = (marker: number, body: Buffer) => {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(body.length + 2);
    return Buffer.concat([Buffer.from([0xff, marker]), len, body]);
  };
  const sofBody = Buffer.alloc(15);
  sofBody[0] = 8;
  sofBody.writeUInt16BE(height, 1);
  sofBody.writeUInt16BE(width, 3);
  sofBody[5] = 3;
  return Buffer.concat([Buffer.from([0xff, 0xd8]), seg(0xe0, Buffer.from('JFIF\0\x01\x01\0\0\x01\0\x01\0\0', 'latin1')), seg(0xdb, Buffer.alloc(65)),
    Buffer.from([0xff]), // a fill byte before the next marker is legal
    seg(sof, sofBody), seg(0xda, Buffer.alloc(10))]);
}

test('a PNG’s size is its IHDR’s', () => {
  assert.deepEqual(imageSize(solidPng(36, 64, [1, 2, 3])), { width: 36, height: 64, mediaType: 'image/png' });
  assert.deepEqual(imageSize(new Uint8Array(solidPng(1280, 2, [0, 0, 0]))), { width: 1280, height: 2, mediaType: 'image/png' });
});

test('a JPEG’s size is its first start-of-frame’s, baseline or progressive, past other segments', () => {
  assert.deepEqual(imageSize(jpegHeader(1280, 720)), { width: 1280, height: 720, mediaType: 'image/jpeg' });
  assert.deepEqual(imageSize(jpegHeader(640, 480, 0xc2)), { width: 640, height: 480, mediaType: 'image/jpeg' });
});

test('anything else, or a header cut short, is an ImageSizeError', () => {
  assert.throws(() => imageSize(Buffer.from('GIF89a......')), (e: unknown) => e instanceof ImageSizeError && /not a PNG or JPEG/.test(e.message));
  assert.throws(() => imageSize(solidPng(2, 2, [0, 0, 0]).subarray(0, 20)), /IHDR/);
  assert.throws(() => imageSize(jpegHeader(10, 10).subarray(0, 30)), /start-of-frame/);
  assert.throws(() => imageSize(Buffer.alloc(0)), ImageSizeError);
});
