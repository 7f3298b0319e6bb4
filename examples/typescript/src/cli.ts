// Command line around client.ts; every result is one JSON line on stdout.
//
//   tsx src/cli.ts info     --target HOST:PORT
//   tsx src/cli.ts health   --target HOST:PORT [--service engram.v1.Engram]
//   tsx src/cli.ts services --target HOST:PORT
//   tsx src/cli.ts stream   --target HOST:PORT --space S --ids FILE --vectors FILE [--batch 200] [--pause-ms 0]
//   tsx src/cli.ts recall   --target HOST:PORT --space S --queries FILE --k 10
//   tsx src/cli.ts forget   --target HOST:PORT --space S --ids FILE [--no-wait | --session]
//   tsx src/cli.ts hold     --target HOST:PORT --space S --seconds 60 --keepalive-ms 1000
//
// FILEs are raw little-endian arrays: ids uint64, vectors/queries float32
// row-major; dim comes from the gateway's limits. A failed call prints
// {"error": {"code", "name", "details"}} and exits 2.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";

import { EngramClient } from "./client.js";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    target: { type: "string", default: "127.0.0.1:50051" },
    token: { type: "string" },
    service: { type: "string", default: "" },
    space: { type: "string", default: "default" },
    priority: { type: "string", default: "normal" },
    ids: { type: "string" },
    vectors: { type: "string" },
    queries: { type: "string" },
    batch: { type: "string", default: "200" },
    "pause-ms": { type: "string", default: "0" },
    k: { type: "string", default: "10" },
    seconds: { type: "string", default: "60" },
    "keepalive-ms": { type: "string" },
    "no-wait": { type: "boolean", default: false },
    session: { type: "boolean", default: false }, // forget: one forget batch in a session, then close(drain)
  },
});

const print = (obj: unknown) =>
  console.log(JSON.stringify(obj, (_key, v) => (typeof v === "bigint" ? v.toString() : v)));

function readIds(file: string): bigint[] {
  const raw = readFileSync(file);
  return Array.from({ length: raw.length / 8 }, (_, i) => raw.readBigUInt64LE(8 * i));
}

function readFloats(file: string): Float32Array {
  const raw = readFileSync(file);
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function main(): Promise<void> {
  const keepaliveMs = values["keepalive-ms"] ? Number(values["keepalive-ms"]) : undefined;
  const client = new EngramClient(values.target!, { token: values.token, keepaliveMs, retryTimeoutMs: 60_000 });
  try {
    switch (positionals[0]) {
      case "info":
        print(await client.info());
        break;
      case "health":
        print({ service: values.service, status: await client.healthCheck(values.service) });
        break;
      case "services":
        print({ services: await client.listServices() });
        break;
      case "stream": {
        const ids = readIds(values.ids!);
        const vectors = readFloats(values.vectors!);
        const dim = vectors.length / ids.length;
        const batch = Number(values.batch);
        const session = client.session(values.space!, values.priority as "normal");
        let accepted = 0;
        for (let lo = 0; lo < ids.length; lo += batch) {
          const hi = Math.min(ids.length, lo + batch);
          const ack = await session.send(ids.slice(lo, hi), vectors.subarray(lo * dim, hi * dim));
          accepted += ack.accepted;
          print({ ack: lo / batch, sessionId: session.sessionId, ...ack });
          if (Number(values["pause-ms"])) await sleep(Number(values["pause-ms"]));
        }
        const closed = await session.close(true);
        print({ done: true, sessionId: session.sessionId, accepted, reconnects: session.reconnects, ...closed });
        break;
      }
      case "recall": {
        const res = await client.recall(values.space!, readFloats(values.queries!), Number(values.k));
        print(res);
        break;
      }
      case "forget": {
        const ids = readIds(values.ids!);
        if (values.session) {
          const session = client.session(values.space!);
          const ack = await session.forget(ids);
          const closed = await session.close(true);
          print({ sessionId: session.sessionId, ...ack, ...closed });
        } else {
          print(await client.forget(values.space!, ids, !values["no-wait"]));
        }
        break;
      }
      case "hold": {
        const session = client.session(values.space!);
        await session.open();
        print({ ready: true, sessionId: session.sessionId });
        await session.hold(Number(values.seconds) * 1000);
        const dim = session.limits!.dim;
        const ack = await session.send([1n], new Float32Array(dim).fill(0.5));
        print({ held: Number(values.seconds), accepted: ack.accepted, reconnects: session.reconnects });
        await session.close();
        break;
      }
      default:
        throw new Error(`unknown command ${positionals[0]}; see the top of src/cli.ts`);
    }
  } catch (err) {
    const e = err as grpc.ServiceError;
    if (typeof e.code !== "number") throw err;
    print({ error: { code: e.code, name: grpc.status[e.code], details: e.details } });
    process.exitCode = 2;
  } finally {
    client.close();
  }
}

await main();
