// Options the application leaves `undefined` reach the server as BSON null: the Node.js driver
// copies them into the command (e.g. into the $changeStream stage) and its serializer writes
// `undefined` as null unless `ignoreUndefined` is set (it is false by default). mongod's IDL
// parsers treat an optional field holding null as absent, so these calls must work.
//
//   node null_options.js <mongodb-uri>
//
// Prints one JSON line with what it observed; exits non-zero (with the error on stderr) when a
// step fails. tests/node/test_node_null_options.py runs it and checks the JSON.
"use strict";

const assert = require("node:assert/strict");
const { BSON, MongoClient } = require("mongodb");

async function main(uri) {
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10000, monitorCommands: true });
  // What the driver's serializer, with the client's BSON options (ignoreUndefined: false by
  // default), does with undefined: a null field.
  const bsonOptions = client.bsonOptions;
  const encoded = BSON.deserialize(BSON.serialize({ resumeAfter: undefined }, bsonOptions));
  const undefinedBecomes = {
    ignoreUndefined: bsonOptions.ignoreUndefined,
    hasKey: "resumeAfter" in encoded,
    value: encoded.resumeAfter,
  };
  const sentStages = [];
  client.on("commandStarted", (event) => {
    if (event.commandName === "aggregate" && event.command.pipeline?.[0]?.$changeStream) {
      sentStages.push(Object.keys(event.command.pipeline[0].$changeStream).sort());
    }
  });
  try {
    await client.connect();
    const items = client.db("node_null_options").collection("items");
    await items.drop().catch(() => {});
    await items.insertOne({ _id: 0, n: 0 });

    const stream = items.watch([], {
      resumeAfter: undefined,
      startAfter: undefined,
      startAtOperationTime: undefined,
      fullDocument: undefined,
      fullDocumentBeforeChange: undefined,
      showExpandedEvents: undefined,
      maxAwaitTimeMS: 500,
    });
    // The aggregate runs on the first tryNext(), before the insert below.
    assert.equal(await stream.tryNext(), null);
    await items.insertOne({ _id: 1, n: 1 });
    const change = await stream.next();
    await stream.close();

    const found = await items
      .find({}, { sort: undefined, projection: undefined, hint: undefined, limit: undefined })
      .toArray();
    const updated = await items.updateOne(
      { _id: 1 },
      { $set: { n: 2 } },
      { upsert: undefined, arrayFilters: undefined, collation: undefined, let: undefined },
    );
    const counted = await items.countDocuments({}, { collation: undefined });

    const report = {
      undefinedBecomes,
      sentStages,
      event: { operationType: change.operationType, id: change.documentKey._id },
      found,
      modified: updated.modifiedCount,
      counted,
    };
    process.stdout.write(JSON.stringify(report) + "\n");
  } finally {
    await client.close();
  }
}

main(process.argv[2]).catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
