/** What `trajstore services status` reports for one local service. */
export interface ServiceStatus {
  name: string;
  state: 'running' | 'stopped' | 'unhealthy';
  address: string;
  version: string | undefined;
  pid: number | undefined;
  dataDir: string;
  logFile: string;
  detail?: string;
}

/** A server this project installs and runs on a machine without Docker. */
export interface LocalService {
  readonly name: string;
  /** Fetches binaries if missing (idempotent; cached). */
  install(log: (line: string) => void): Promise<void>;
  /** Starts the server unless it already runs, then waits until it answers. Returns whether it started it. */
  start(log: (line: string) => void): Promise<boolean>;
  /** Stops the server and every process it started. Returns whether one was running. */
  stop(log: (line: string) => void): Promise<boolean>;
  status(): Promise<ServiceStatus>;
}
