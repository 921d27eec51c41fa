// Authenticates with the Node.js mongodb driver (6.x) against a server started with --auth:
// default mechanism negotiation (SCRAM-SHA-256 via speculativeAuthenticate), explicit
// SCRAM-SHA-1, a wrong password, and an unauthenticated command.
//
//   node auth_check.js <mongodb-uri> <user> <password>
//
// Prints one JSON line with what it observed; tests/node/test_node_auth.py checks it.
"use strict";

const { MongoClient } = require("mongodb");

function withCredentials(uri, user, password, mechanism) {
  const url = new URL(uri);
  url.username = encodeURIComponent(user);
  url.password = encodeURIComponent(password);
  url.searchParams.set("authSource", "admin");
  if (mechanism) url.searchParams.set("authMechanism", mechanism);
  return url.toString();
}

async function attempt(uri, work) {
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10000 });
  try {
    await client.connect();
    return { ok: true, value: await work(client) };
  } catch (error) {
    return { ok: false, code: error.code ?? null, message: String(error.message) };
  } finally {
    await client.close();
  }
}

async function main() {
  const [uri, user, password] = process.argv.slice(2);
  if (!password) throw new Error("usage: node auth_check.js <uri> <user> <password>");
  const result = {};
  const whoAmI = async (client) => {
    const items = client.db("node_auth").collection("items");
    await items.insertOne({ at: new Date() });
    const status = await client.db("admin").command({ connectionStatus: 1 });
    return { count: await items.countDocuments(), users: status.authInfo.authenticatedUsers };
  };
  result.default = await attempt(withCredentials(uri, user, password), whoAmI);
  result.sha256 = await attempt(withCredentials(uri, user, password, "SCRAM-SHA-256"), whoAmI);
  result.sha1 = await attempt(withCredentials(uri, user, password, "SCRAM-SHA-1"), whoAmI);
  result.wrongPassword = await attempt(withCredentials(uri, user, password + "x"), whoAmI);
  result.anonymous = await attempt(uri, (client) =>
    client.db("node_auth").collection("items").findOne({}));
  console.log(JSON.stringify(result));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
