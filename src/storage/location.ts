/**
 * What a store location in the config names (`storage.blobs`, `storage.adapters`): an
 * S3-compatible bucket (`s3://bucket/prefix`), or a local directory (a path or a `file://` URI).
 * Any other scheme is null, for the caller to refuse with its own error and field.
 */
import { fileURLToPath } from 'node:url';

export type StorageLocation = { kind: 's3'; uri: string } | { kind: 'local'; path: string };

export function parseStorageLocation(location: string): StorageLocation | null {
  if (location.startsWith('s3://')) return { kind: 's3', uri: location };
  if (location.startsWith('file://')) return { kind: 'local', path: fileURLToPath(location) };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) return null;
  return { kind: 'local', path: location };
}
