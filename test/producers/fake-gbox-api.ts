/**
 * A stand-in for GBox's HTTP API (the part the GBox environment calls), for tests only: GBox
 * cannot be reached from here. The environment under test uses the real `gbox-sdk`, which talks
 * HTTP to this server exactly as it would to GBox. The fake simulates one app screen: a
 * "Settings" icon at a fixed spot; clicking it opens Settings, which the task's check command
 * then reports.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { crc32, deflateSync } from 'node:zlib';

export const SETTINGS_ICON = { x: 100, y: 200, radius: 30 };

export interface FakeBox {
  id: string;
  type: string;
  deleted: boolean;
  commands: string[];
  actions: Array<{ kind: string; body: Record<string, unknown> }>;
  focused: 'launcher' | 'settings';
}

export interface FakeGBox {
  baseUrl: string;
  boxes: Map<string, FakeBox>;
  authHeaders: string[];
  /** Make the next calls to an action answer this HTTP status. */
  failActions(status: number | null): void;
  close(): Promise<void>;
}

/** A real PNG (solid colour, w × h) so the environment's PNG checks and the blob store see real bytes. */
export function solidPng(width: number, height: number, rgb: [number, number, number]): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body) >>> 0);
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.alloc(width * 3).map((_, i) => rgb[i % 3]!)]);
  const raw = Buffer.concat(Array.from({ length: height }, () => row));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

async function body(req: IncomingMessage): Promise<Record<string, unknown>> {
  let text = '';
  for await (const c of req) text += c;
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

export async function startFakeGBox(): Promise<FakeGBox> {
  const boxes = new Map<string, FakeBox>();
  const authHeaders: string[] = [];
  let failStatus: number | null = null;
  const server: Server = createServer(async (req, res) => {
    authHeaders.push(String(req.headers.authorization));
    const send = (status: number, value: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(value));
    };
    const url = new URL(req.url!, 'http://x');
    const parts = url.pathname.replace(/^\/+/, '').split('/');
    const input = await body(req);
    if (req.method === 'POST' && parts[0] === 'boxes' && (parts[1] === 'android' || parts[1] === 'linux') && parts.length === 2) {
      const box: FakeBox = { id: randomUUID(), type: parts[1], deleted: false, commands: [], actions: [], focused: 'launcher' };
      boxes.set(box.id, box);
      const now = new Date().toISOString();
      return send(200, { id: box.id, type: box.type, status: 'running', config: { os: { version: '13' }, cpu: 2, memory: 2048, envs: {}, labels: {}, resolution: { width: 360, height: 640 } }, createdAt: now, updatedAt: now, expiresAt: now });
    }
    const box = boxes.get(parts[1] ?? '');
    if (!box || box.deleted) return send(404, { message: 'box not found' });
    if (req.method === 'DELETE' && parts.length === 2) {
      box.deleted = true;
      res.writeHead(204);
      return res.end();
    }
    if (parts[2] === 'commands') {
      const command = String(input.commands);
      box.commands.push(command);
      return send(200, { exitCode: 0, stdout: command.includes('dumpsys') ? `mCurrentFocus=Window{${box.focused === 'settings' ? 'com.android.settings' : 'com.android.launcher3'}}` : '', stderr: '' });
    }
    if (parts[2] === 'actions') {
      const kind = parts[3]!;
      if (kind !== 'screenshot' && failStatus !== null) return send(failStatus, { message: `injected ${failStatus}` });
      if (kind === 'screenshot') {
        const png = solidPng(36, 64, box.focused === 'settings' ? [40, 90, 200] : [240, 240, 240]);
        return send(200, { uri: `data:image/png;base64,${png.toString('base64')}` });
      }
      box.actions.push({ kind, body: input });
      if (kind === 'click') {
        const dx = Number(input.x) - SETTINGS_ICON.x;
        const dy = Number(input.y) - SETTINGS_ICON.y;
        if (dx * dx + dy * dy <= SETTINGS_ICON.radius ** 2) box.focused = 'settings';
      }
      return send(200, { actionId: randomUUID() });
    }
    send(404, { message: `no route ${req.method} ${url.pathname}` });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as { port: number };
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    boxes,
    authHeaders,
    failActions: (status) => (failStatus = status),
    close: () => new Promise((done) => server.close(() => done())),
  };
}
