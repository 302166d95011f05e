/**
 * What the S3-backed stores (blobs, adapters) share: where `s3://bucket/prefix` points, a client
 * for AWS or an S3-compatible server (MinIO, R2, Ceph, s3proxy), and reading S3's answers.
 * Credentials come from the AWS SDK's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
 * profiles, instance roles): never from trajstore's config, which is committed to git.
 */
import { S3Client } from '@aws-sdk/client-s3';

export interface S3Options {
  endpoint?: string | undefined;
  region?: string | undefined;
  forcePathStyle?: boolean | undefined;
}

/** The S3 options of a config's `storage` section. */
export function s3OptionsOf(storage: { s3_endpoint?: string | undefined; s3_region: string; s3_force_path_style: boolean }): S3Options {
  return { endpoint: storage.s3_endpoint, region: storage.s3_region, forcePathStyle: storage.s3_force_path_style };
}

/** `s3://bucket/a/b/` → bucket `bucket`, prefix `a/b` (no slashes at either end); null without a bucket. */
export function parseS3Location(location: string): { bucket: string; prefix: string } | null {
  const url = new URL(location);
  if (!url.hostname) return null;
  return { bucket: url.hostname, prefix: url.pathname.replace(/^\/+|\/+$/g, '') };
}

export function createS3Client(options: S3Options): S3Client {
  return new S3Client({
    region: options.region ?? 'us-east-1',
    ...(options.endpoint ? { endpoint: options.endpoint } : {}),
    forcePathStyle: options.forcePathStyle ?? false,
  });
}

/** The HTTP status of an S3 error (404 for a missing key, 412 for a failed If-None-Match), if it has one. */
export function s3Status(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

export const S3_HINT = 'check storage.s3_endpoint, the bucket, and AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)';
