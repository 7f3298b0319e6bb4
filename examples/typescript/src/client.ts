// A typed Node.js client of the engram-streaming gateway (engine/rpc/engram.proto).
//
// What docs/clients.md asks of a client in another language, in one file:
//   - uint64 values (session ids, sequence numbers, ids) stay exact: strings
//     on the wire objects (proto-loader `longs: String`), bigint in this API;
//   - the receive limit is raised to the gateway's Limits.max_message_bytes
//     (grpc-js defaults to 4 MiB, less than a large recall answer);
//   - a session resends from the ack's next_sequence, waits retry_after_ms on
//     over_capacity, and on UNAVAILABLE reconnects and resumes by session id,
//     sending the same numbers again (the gateway answers `duplicate` for
//     what already went in, so nothing is queued twice);
//   - forget (unary, and numbered forget batches inside a session) resends
//     an over_capacity remainder after retry_after_ms, like a batch.
import * as path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ENGRAM_PROTO = path.resolve(HERE, "../../../engine/rpc/engram.proto");
const HEALTH_PROTO = path.resolve(HERE, "../proto/health.proto");
const REFLECTION_PROTO = path.resolve(HERE, "../proto/reflection.proto");

const LOADER: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024; // the gateway's default --grpc-max-message-bytes

export type Priority = "high" | "normal" | "low";
export type Backpressure = "normal" | "warning" | "critical" | "overloaded";

export interface Limits {
  dim: number;
  metric: string;
  max_batch: number;
  max_message_bytes: string;
  max_k: number;
  max_sessions: number;
  session_idle_timeout_s: number;
}

export interface Info {
  limits: Limits;
  spaces: { name: string; vectors: string }[];
  backpressure: string;
  state: string;
  workers: number;
  workers_up: number;
  active_sessions: number;
  pressure: number;
}

/** What one send() achieved, summed over its retries. */
export interface Ack {
  accepted: number; // leading observations now queued (duplicates of a resend included)
  rejected: Record<string, number>; // what is final: invalid_input, or what was still refused at the deadline
  backpressure: Backpressure;
  nextSequence: bigint;
  resumes: number; // reconnects this send went through
  notFound: number; // forget batches: accepted ids the space neither held nor had queued
}

/** What one forget() achieved, summed over its retries. */
export interface ForgetResult {
  accepted: number; // leading ids now queued to be applied
  notFound: number; // of those, ids the space neither held nor had queued (not an error)
  rejected: Record<string, number>; // over_capacity still refused at the retry deadline
  applied: boolean; // every accepted forget was applied before the answer: no recall returns them
  backpressure: Backpressure;
  message: string;
}

export interface RecallResult {
  ids: bigint[][];
  distances: number[][];
  complete: boolean;
}

export interface ClientOptions {
  token?: string;
  maxMessageBytes?: number;
  keepaliveMs?: number; // send HTTP/2 pings this often (the gateway accepts down to 1 s)
  retryTimeoutMs?: number; // how long one send keeps retrying
}

interface WireAck {
  first_sequence: string;
  count: number;
  accepted: number;
  rejected: Record<string, number>;
  backpressure: string;
  retry_after_ms: number;
  next_sequence: string;
  message: string;
  not_found: number;
}

interface WireForget {
  count: number;
  accepted: number;
  not_found: number;
  rejected: Record<string, number>;
  backpressure: string;
  retry_after_ms: number;
  applied: boolean;
  message: string;
}

type ServerMessage =
  | { kind: "ready"; ready: { session_id: string; next_sequence: string; limits: Limits; backpressure: string; resumed: boolean } }
  | { kind: "ack"; ack: WireAck }
  | { kind: "status"; status: { backpressure: string; paused: boolean; retry_after_ms: number; message: string } }
  | { kind: "closed"; closed: { next_sequence: string; accepted_total: string; drained: boolean } };

type Duplex = grpc.ClientDuplexStream<object, ServerMessage>;
type Ctor = new (target: string, creds: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => grpc.Client;
// Stub methods as proto-loader builds them (untyped): wrapped below with types.
type Stub = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

function load(file: string): grpc.GrpcObject {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, LOADER));
}

function ctor(root: grpc.GrpcObject, dotted: string): Ctor {
  let node: unknown = root;
  for (const part of dotted.split(".")) node = (node as Record<string, unknown>)[part];
  return node as Ctor;
}

function backpressureName(wire: string): Backpressure {
  return wire.replace("BACKPRESSURE_", "").toLowerCase() as Backpressure;
}

export function packIds(ids: readonly bigint[]): Buffer {
  const out = Buffer.alloc(8 * ids.length);
  ids.forEach((id, i) => out.writeBigUInt64LE(id, 8 * i));
  return out;
}

export function packFloats(values: Float32Array): Buffer {
  const out = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => out.writeFloatLE(v, 4 * i));
  return out;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class EngramClient {
  readonly metadata = new grpc.Metadata();
  private readonly engram: Stub;
  private readonly health: Stub;
  private readonly reflection: Stub;
  readonly retryTimeoutMs: number;

  constructor(readonly target: string, opts: ClientOptions = {}) {
    const channelOptions: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    };
    if (opts.keepaliveMs) {
      channelOptions["grpc.keepalive_time_ms"] = opts.keepaliveMs;
      channelOptions["grpc.keepalive_timeout_ms"] = 20_000;
      channelOptions["grpc.keepalive_permit_without_calls"] = 1;
    }
    if (opts.token) this.metadata.set("authorization", `Bearer ${opts.token}`);
    const creds = grpc.credentials.createInsecure();
    this.engram = new (ctor(load(ENGRAM_PROTO), "engram.v1.Engram"))(target, creds, channelOptions) as Stub;
    // One channel per stub is fine for an example; share one with grpc.Client's channelOverride in production.
    this.health = new (ctor(load(HEALTH_PROTO), "grpc.health.v1.Health"))(target, creds) as Stub;
    this.reflection = new (ctor(load(REFLECTION_PROTO), "grpc.reflection.v1.ServerReflection"))(target, creds) as Stub;
    this.retryTimeoutMs = opts.retryTimeoutMs ?? 30_000;
  }

  private unary<T>(stub: Stub, method: string, request: object): Promise<T> {
    return new Promise((resolve, reject) => {
      stub[method](request, this.metadata, { deadline: Date.now() + 30_000 }, (err: grpc.ServiceError | null, res: T) =>
        err ? reject(err) : resolve(res));
    });
  }

  info(): Promise<Info> {
    return this.unary<Info>(this.engram, "Info", {});
  }

  async recall(space: string, queries: Float32Array, k: number, fresh = false): Promise<RecallResult> {
    const res = await this.unary<{ queries: number; k: number; ids: Buffer; distances: Buffer; complete: boolean }>(
      this.engram, "Recall", { space, queries: packFloats(queries), k, fresh });
    const ids: bigint[][] = [];
    const distances: number[][] = [];
    for (let q = 0; q < res.queries; q++) {
      ids.push([]);
      distances.push([]);
      for (let j = 0; j < res.k; j++) {
        ids[q].push(res.ids.readBigUInt64LE(8 * (q * res.k + j)));
        distances[q].push(res.distances.readFloatLE(4 * (q * res.k + j)));
      }
    }
    return { ids, distances, complete: res.complete };
  }

  /**
   * Remove ids from a space. With `wait` the answer comes once every accepted
   * forget is applied (`applied`), or shortly before the call's deadline. An
   * over_capacity remainder is sent again after retry_after_ms until the
   * client's retry timeout. Bad input (a bad space name, too many ids) is
   * INVALID_ARGUMENT, thrown. Forgetting twice is harmless: a retry counts
   * the ids the first attempt removed as notFound.
   */
  async forget(space: string, ids: readonly bigint[], wait = true): Promise<ForgetResult> {
    const deadline = Date.now() + this.retryTimeoutMs;
    let done = 0;
    let notFound = 0;
    let applied = true;
    for (let attempt = 0; ; attempt++) {
      const res = await this.unary<WireForget>(this.engram, "Forget", {
        space, ids: packIds(ids.slice(done)), no_wait: !wait });
      done += res.accepted;
      notFound += res.not_found;
      applied &&= res.applied;
      const over = res.rejected["over_capacity"] ?? 0;
      if (!over || done >= ids.length || Date.now() > deadline) {
        return { accepted: done, notFound, rejected: { ...res.rejected }, applied,
                 backpressure: backpressureName(res.backpressure), message: res.message };
      }
      await sleep(res.retry_after_ms || Math.min(1000, 50 * 2 ** attempt));
    }
  }

  /** SERVING, NOT_SERVING, ... of a service ("" for the whole server). */
  async healthCheck(service = ""): Promise<string> {
    const res = await this.unary<{ status: string }>(this.health, "Check", { service });
    return res.status;
  }

  /** Service names the server lists through reflection (v1). */
  listServices(): Promise<string[]> {
    return new Promise((resolve, reject) => {
      const call = this.reflection.ServerReflectionInfo(this.metadata) as grpc.ClientDuplexStream<object, {
        list_services_response?: { service: { name: string }[] };
        error_response?: { error_message: string };
      }>;
      call.on("data", (res) => {
        call.end();
        if (res.error_response) reject(new Error(res.error_response.error_message));
        else resolve((res.list_services_response?.service ?? []).map((s: { name: string }) => s.name));
      });
      call.on("error", reject);
      call.write({ list_services: "" });
    });
  }

  session(space: string, priority: Priority = "normal"): Session {
    return new Session(this, space, priority);
  }

  /** @internal */
  openStream(): Duplex {
    return this.engram.ObserveStream(this.metadata) as Duplex;
  }

  close(): void {
    for (const stub of [this.engram, this.health, this.reflection]) stub.close();
  }
}

/** Messages of one ObserveStream call, read one at a time. */
class Inbox {
  private readonly queue: (ServerMessage | Error | null)[] = [];
  private waiter?: () => void;

  constructor(call: Duplex) {
    call.on("data", (m: ServerMessage) => this.push(m));
    call.on("error", (e: Error) => this.push(e));
    call.on("end", () => this.push(null));
  }

  private push(item: ServerMessage | Error | null): void {
    this.queue.push(item);
    this.waiter?.();
  }

  /** The next message of `kind` (skipping Status pushes, which `onStatus` sees). */
  async next(kind: ServerMessage["kind"], onStatus: (m: ServerMessage) => void): Promise<ServerMessage> {
    for (;;) {
      while (this.queue.length === 0) await new Promise<void>((resolve) => (this.waiter = resolve));
      const item = this.queue.shift()!;
      if (item === null) throw Object.assign(new Error("the gateway ended the stream"), { code: grpc.status.UNAVAILABLE });
      if (item instanceof Error) throw item;
      if (item.kind === kind) return item;
      if (item.kind === "status") onStatus(item);
      else throw new Error(`expected ${kind}, got ${item.kind}`);
    }
  }
}

const RETRYABLE = new Set([grpc.status.UNAVAILABLE]);

export class Session {
  sessionId = "0"; // decimal string: a uint64 does not fit a JS number
  nextSequence = 1n;
  limits?: Limits;
  paused = false;
  retryAfterMs = 0;
  reconnects = 0;
  private call?: Duplex;
  private inbox?: Inbox;

  constructor(private readonly client: EngramClient, readonly space: string, readonly priority: Priority) {}

  private onStatus = (m: ServerMessage) => {
    if (m.kind !== "status") return;
    this.paused = m.status.paused;
    this.retryAfterMs = m.status.retry_after_ms;
  };

  /** Open the session, or resume it after a broken connection. */
  async open(): Promise<void> {
    const call = this.client.openStream();
    const inbox = new Inbox(call);
    call.write({ init: { space: this.space, priority: `PRIORITY_${this.priority.toUpperCase()}`, resume_session_id: this.sessionId } });
    const m = await inbox.next("ready", this.onStatus);
    if (m.kind !== "ready") throw new Error("unreachable");
    this.call = call;
    this.inbox = inbox;
    this.sessionId = m.ready.session_id;
    this.nextSequence = BigInt(m.ready.next_sequence);
    this.limits = m.ready.limits;
  }

  private drop(): void {
    this.call?.cancel();
    this.call = undefined;
    this.inbox = undefined;
  }

  private async reconnect(deadline: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      this.drop();
      try {
        await this.open();
        this.reconnects++;
        return;
      } catch (err) {
        const code = (err as grpc.ServiceError).code;
        if (!RETRYABLE.has(code) || Date.now() > deadline) throw err;
        await sleep(Math.min(1000, 50 * 2 ** attempt));
      }
    }
  }

  /** Send one batch; retries over_capacity and reconnects until it is queued or the retry timeout passes. */
  send(ids: readonly bigint[], vectors: Float32Array): Promise<Ack> {
    return this.submit(ids, vectors);
  }

  /**
   * Forget ids of the session's space: a forget batch, numbered like a batch
   * (ids.length numbers) and resent the same way. Returns once accepted; the
   * forgets are applied in the order acknowledged, after this session's
   * earlier observations (close(true) waits for them).
   */
  forget(ids: readonly bigint[]): Promise<Ack> {
    return this.submit(ids);
  }

  private async submit(ids: readonly bigint[], vectors?: Float32Array): Promise<Ack> {
    if (!this.call) await this.open();
    const dim = vectors ? vectors.length / ids.length : 0;
    const start = this.nextSequence;
    const deadline = Date.now() + this.client.retryTimeoutMs;
    let done = 0; // observations of this batch the session has advanced past
    let resumes = 0;
    let last: WireAck | undefined;
    let notFound = 0;
    const rejected: Record<string, number> = {};
    for (let attempt = 0; done < ids.length; attempt++) {
      try {
        if (!this.call) {
          await this.reconnect(deadline);
          resumes++;
        }
        const first_sequence = (start + BigInt(done)).toString();
        const rest = packIds(ids.slice(done));
        this.call!.write(vectors
          ? { batch: { first_sequence, ids: rest, vectors: packFloats(vectors.subarray(done * dim)) } }
          : { forget: { first_sequence, ids: rest } });
        const m = await this.inbox!.next("ack", this.onStatus);
        if (m.kind !== "ack") throw new Error("unreachable");
        last = m.ack;
      } catch (err) {
        if (!RETRYABLE.has((err as grpc.ServiceError).code) || Date.now() > deadline) throw err;
        this.drop(); // resend the same numbers after the resume: `duplicate` covers what went in
        continue;
      }
      this.nextSequence = BigInt(last.next_sequence);
      notFound += last.not_found;
      // The session advanced by accepted + duplicate; anything else is resent from next_sequence.
      done = Number(this.nextSequence - start);
      const invalid = last.rejected["invalid_input"] ?? 0;
      if (invalid) {
        rejected["invalid_input"] = invalid; // final: the data is wrong
        break;
      }
      if (done < ids.length) {
        if (Date.now() > deadline) {
          Object.assign(rejected, last.rejected);
          delete rejected["duplicate"];
          break;
        }
        if (last.rejected["over_capacity"]) await sleep(last.retry_after_ms || Math.min(1000, 50 * 2 ** attempt));
      }
    }
    return {
      accepted: done,
      rejected,
      backpressure: backpressureName(last?.backpressure ?? "BACKPRESSURE_NORMAL"),
      nextSequence: this.nextSequence,
      resumes,
      notFound,
    };
  }

  /** Close the session; with drain, the answer waits until everything queued is inserted. */
  async close(drain = false): Promise<{ acceptedTotal: bigint; drained: boolean }> {
    if (!this.call) await this.reconnect(Date.now() + this.client.retryTimeoutMs);
    this.call!.write({ close: { drain, drain_timeout_s: 30 } });
    const m = await this.inbox!.next("closed", this.onStatus);
    this.call!.end();
    this.call = undefined;
    if (m.kind !== "closed") throw new Error("unreachable");
    return { acceptedTotal: BigInt(m.closed.accepted_total), drained: m.closed.drained };
  }

  /** Hold the stream open without sending (to see that keepalive pings keep it alive). */
  async hold(ms: number): Promise<void> {
    if (!this.call) await this.open();
    const call = this.call!;
    let failure: Error | undefined;
    const onError = (e: Error) => (failure = e);
    call.on("error", onError);
    await sleep(ms);
    call.off("error", onError);
    if (failure) throw failure;
  }
}
