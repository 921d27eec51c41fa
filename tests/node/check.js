// Exercises the Node.js mongodb driver (6.x) against a server: handshake (Node sends its first
// hello as OP_QUERY), CRUD, a change stream, transactions, and a retried write.
//
//   node check.js <mongodb-uri>
//
// Prints one JSON line with what it observed; exits non-zero (with the error on stderr) when a
// step fails. tests/node/test_node_driver.py runs it and checks the JSON.
"use strict";

const assert = require("node:assert/strict");
const { MongoClient } = require("mongodb");

function withOption(uri, option) {
  const url = new URL(uri);
  const [name, value] = option.split("=");
  url.searchParams.set(name, value);
  return url.toString();
}

async function topologyOf(uri) {
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10000 });
  const serverTypes = [];
  client.on("serverDescriptionChanged", (event) => serverTypes.push(event.newDescription.type));
  try {
    await client.connect();
    await client.db("admin").command({ ping: 1 });
    const description = client.topology.description;
    return {
      topologyType: description.type,
      serverTypes: [...description.servers.values()].map((s) => s.type),
      observedServerTypes: serverTypes,
      logicalSessionTimeoutMinutes: description.logicalSessionTimeoutMinutes,
    };
  } finally {
    await client.close();
  }
}

async function main() {
  const uri = process.argv[2];
  if (!uri) throw new Error("usage: node check.js <mongodb-uri>");
  const result = { driverVersion: require("mongodb/package.json").version };

  result.plain = await topologyOf(uri);
  result.direct = await topologyOf(withOption(uri, "directConnection=true"));

  const started = [];
  const client = new MongoClient(uri, { monitorCommands: true, serverSelectionTimeoutMS: 10000 });
  client.on("commandStarted", (event) => started.push(event));
  await client.connect();
  const dbName = `node_check_${process.pid}_${Date.now()}`;
  const db = client.db(dbName);
  try {
    const items = db.collection("items");

    // CRUD
    await items.insertOne({ _id: 1, name: "one", n: 1 });
    await items.insertMany([{ _id: 2, name: "two", n: 2 }, { _id: 3, name: "three", n: 3 }]);
    await items.updateOne({ _id: 2 }, { $inc: { n: 10 } });
    await items.deleteOne({ _id: 3 });
    result.found = await items.find({}).sort({ _id: 1 }).toArray();
    const insertCommand = started.find((e) => e.commandName === "insert");
    result.insertHadTxnNumber = insertCommand.command.txnNumber !== undefined;
    result.insertHadLsid = insertCommand.command.lsid !== undefined;

    // Change stream: the aggregate runs on the first tryNext(), before the writes below.
    const stream = items.watch([], { maxAwaitTimeMS: 500 });
    assert.equal(await stream.tryNext(), null);

    // A committed transaction: both inserts appear, with one lsid/txnNumber.
    const session = client.startSession();
    try {
      await session.withTransaction(async () => {
        await items.insertOne({ _id: 10, in: "txn" }, { session });
        await items.insertOne({ _id: 11, in: "txn" }, { session });
        const outside = await items.countDocuments({ in: "txn" });
        assert.equal(outside, 0, "a transaction's writes must be invisible outside it");
      });
    } finally {
      await session.endSession();
    }

    // An aborted transaction: nothing appears.
    const aborted = client.startSession();
    try {
      aborted.startTransaction();
      await items.insertOne({ _id: 20, in: "aborted" }, { session: aborted });
      await aborted.abortTransaction();
    } finally {
      await aborted.endSession();
    }
    await items.insertOne({ _id: 30, in: "after" });

    const events = [];
    while (events.length < 3) {
      const change = await stream.next();
      events.push(change);
    }
    await stream.close();
    result.events = events.map((e) => ({
      operationType: e.operationType,
      id: e.documentKey._id,
      txnNumber: e.txnNumber === undefined ? null : Number(e.txnNumber),
      hasLsid: e.lsid !== undefined,
    }));
    result.afterTransactions = await items.find({ in: { $exists: true } }).sort({ _id: 1 })
      .toArray();

    // A retried write: the server drops the connection once; the driver retries once.
    const params = await client.db("admin").command({ getParameter: 1, enableTestCommands: 1 })
      .catch(() => ({}));
    if (params.enableTestCommands) {
      await client.db("admin").command({
        configureFailPoint: "failCommand",
        mode: { times: 1 },
        data: { failCommands: ["insert"], closeConnection: true },
      });
      started.length = 0;
      await items.insertOne({ _id: 40, retried: true });
      result.retry = {
        inserts: started.filter((e) => e.commandName === "insert").length,
        stored: await items.countDocuments({ _id: 40 }),
      };
    }
  } finally {
    await db.dropDatabase().catch(() => undefined);
    await client.close();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
