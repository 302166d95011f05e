/**
 * How many image placeholder tokens (`<|image_pad|>`) a Qwen2-VL / Qwen3-VL server puts into a
 * prompt for an image, from the image's size and the processor settings a Turn records. The
 * trainer compares this with the pads in the Turn's prompt_token_ids before it trains: a
 * mismatch means the engine's image processor would not reproduce what was sampled.
 *
 * smartResize is transformers' `smart_resize` (transformers 5.17.0,
 * models/qwen2_vl/image_processing_qwen2_vl.py, lines 62-88; the same function vLLM calls
 * through the processor's get_number_of_image_patches), step for step in the same IEEE double
 * arithmetic, with Python's `round` (ties to even: round(22.5) is 22, where Math.round gives
 * 23). The processor resizes with factor = patch_size * merge_size, cuts the result into
 * patch_size patches (grid = height / patch_size x width / patch_size), and the model merges
 * merge_size x merge_size patches into one token.
 */
import type { ImageProcessing, PromptImage } from '../../schemas/index.js';
import type { NumberSeq } from './types.js';

export type ImageGeometry = Pick<ImageProcessing, 'min_pixels' | 'max_pixels' | 'patch_size' | 'merge_size'>;

/** An image transformers' processor refuses (aspect ratio over 200): no server can have expanded it. */
export class ImageGeometryError extends Error {
  override name = 'ImageGeometryError';
}

/** Python 3's round() of a float to an integer: halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // Math.round sends x.5 up; Python sends it to the even integer.
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * transformers' smart_resize: height and width, each a multiple of `factor`, with
 * min_pixels <= height * width <= max_pixels, the aspect ratio kept as closely as possible.
 */
export function smartResize(height: number, width: number, factor: number, minPixels: number, maxPixels: number): { height: number; width: number } {
  if (!(height > 0 && width > 0)) throw new ImageGeometryError(`image size ${width}x${height} is not positive`);
  const aspect = Math.max(height, width) / Math.min(height, width);
  if (aspect > 200) throw new ImageGeometryError(`absolute aspect ratio must be smaller than 200, got ${aspect}`);
  let hBar = roundHalfEven(height / factor) * factor;
  let wBar = roundHalfEven(width / factor) * factor;
  if (hBar * wBar > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    hBar = Math.max(factor, Math.floor(height / beta / factor) * factor);
    wBar = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (hBar * wBar < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    hBar = Math.ceil((height * beta) / factor) * factor;
    wBar = Math.ceil((width * beta) / factor) * factor;
  }
  return { height: hBar, width: wBar };
}

/** The patch grid (rows x columns of patch_size patches) the processor cuts an image into. */
export function imagePatchGrid(height: number, width: number, g: ImageGeometry): { rows: number; cols: number } {
  const resized = smartResize(height, width, g.patch_size * g.merge_size, g.min_pixels, g.max_pixels);
  return { rows: resized.height / g.patch_size, cols: resized.width / g.patch_size };
}

/** Placeholder tokens of one image: its patches over merge_size^2. */
export function imageTokenCount(height: number, width: number, g: ImageGeometry): number {
  const { rows, cols } = imagePatchGrid(height, width, g);
  return (rows * cols) / (g.merge_size * g.merge_size);
}

/** How often `id` occurs in `ids`. */
export function countToken(ids: NumberSeq, id: number): number {
  let n = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] === id) n++;
  return n;
}

/**
 * Checks a Turn's prompt against its images: the pads in `promptTokenIds` must be the sum of
 * every prompt image's placeholder count under the Turn's settings. Returns why not, or null.
 */
export function placeholderMismatch(
  turn: { promptTokenIds: NumberSeq; promptImages: readonly Pick<PromptImage, 'width' | 'height'>[]; imageProcessing: ImageGeometry | null },
  imageTokenId: number,
): string | null {
  const pads = countToken(turn.promptTokenIds, imageTokenId);
  if (turn.promptImages.length === 0) return pads === 0 ? null : `${pads} image tokens (id ${imageTokenId}) in a prompt without images`;
  if (!turn.imageProcessing) return `${turn.promptImages.length} images without image_processing settings`;
  let expected = 0;
  for (const [i, img] of turn.promptImages.entries()) {
    try {
      expected += imageTokenCount(img.height, img.width, turn.imageProcessing);
    } catch (err) {
      if (!(err instanceof ImageGeometryError)) throw err;
      return `image ${i} (${img.width}x${img.height}): ${err.message}`;
    }
  }
  return pads === expected ? null : `${pads} image tokens (id ${imageTokenId}) in the prompt, ${expected} expected for ${turn.promptImages.length} images`;
}
