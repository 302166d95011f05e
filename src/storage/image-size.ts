/**
 * Width and height of a PNG or JPEG from its header, without decoding the pixels. A Turn records
 * the size of every prompt image (the server's resize, and so its placeholder count, follows from
 * it), and the bytes are the truth: a viewport setting or a device's declared resolution can
 * differ from what the screenshot holds (device pixel ratio, rotation).
 *
 *   const { width, height, mediaType } = imageSize(png);   // throws ImageSizeError on anything else
 */

export class ImageSizeError extends Error {
  override name = 'ImageSizeError';
}

export interface ImageSize {
  width: number;
  height: number;
  mediaType: 'image/png' | 'image/jpeg';
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** The size of a PNG (IHDR) or JPEG (first start-of-frame marker). */
export function imageSize(bytes: Uint8Array): ImageSize {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length >= 8 && b.subarray(0, 8).equals(PNG_SIGNATURE)) return pngSize(b);
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return jpegSize(b);
  throw new ImageSizeError(`not a PNG or JPEG (first bytes ${b.subarray(0, 8).toString('hex') || 'none'})`);
}

/** PNG: the IHDR chunk must come first, right after the signature (PNG spec 5.6). */
function pngSize(b: Buffer): ImageSize {
  if (b.length < 24 || b.toString('latin1', 12, 16) !== 'IHDR') throw new ImageSizeError('PNG without an IHDR chunk first');
  const width = b.readUInt32BE(16);
  const height = b.readUInt32BE(20);
  if (width === 0 || height === 0 || width > 0x7fffffff || height > 0x7fffffff) throw new ImageSizeError(`PNG with impossible size ${width}x${height}`);
  return { width, height, mediaType: 'image/png' };
}

/**
 * JPEG: walk the marker segments to the first SOFn (baseline, progressive, lossless, ...; not
 * DHT C4, JPG C8 or DAC CC, which share the range), whose payload holds height then width.
 */
function jpegSize(b: Buffer): ImageSize {
  let at = 2;
  while (at + 4 <= b.length) {
    if (b[at] !== 0xff) throw new ImageSizeError(`JPEG marker expected at byte ${at}`);
    const marker = b[at + 1]!;
    if (marker === 0xff) {
      at++; // fill byte
      continue;
    }
    // Markers without a length: TEM and RSTn; SOS starts entropy-coded data, past any SOF.
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) break;
    const length = b.readUInt16BE(at + 2);
    if (length < 2) throw new ImageSizeError(`JPEG segment with length ${length} at byte ${at}`);
    const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isSof) {
      if (at + 9 > b.length) break;
      const height = b.readUInt16BE(at + 5);
      const width = b.readUInt16BE(at + 7);
      // Height 0 means "defined later by a DNL marker", which nothing produces for screenshots.
      if (width === 0 || height === 0) throw new ImageSizeError(`JPEG with size ${width}x${height}`);
      return { width, height, mediaType: 'image/jpeg' };
    }
    at += 2 + length;
  }
  throw new ImageSizeError('JPEG without a start-of-frame marker');
}
