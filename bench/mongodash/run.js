'use strict';
/*
 * One mongodash Reactive Tasks instance for bench/side_by_side.py.
 *
 * Usage: node run.js <mongodb-uri> <instance-id> <starts-file> <commands-file>
 *
 * Same workload as the reactgen side: one reactive task `noop` on collection `items`,
 * watchProjection {n: 1} (the task re-runs only when `n` changes), debounce 0, a handler
 * that only appends "<docId> <unix seconds>" to <starts-file> when it starts.
 *
 * Configuration (a user tuning for throughput, public options only):
 *   - reactiveTaskConcurrency 10 (the same as reactgen's --concurrency 10; default 5);
 *   - debounce 0 on the task (default 1000 ms);
 *   - monitoring disabled (no prom-client, no registry pushes; reactgen runs without metrics);
 *   - the MongoClient gets `ignoreUndefined: true`: a property mongodash leaves `undefined`
 *     is then omitted instead of being sent as BSON null. Needed on the embedded server:
 *     mongodash opens its change stream with `resumeAfter: undefined` when it has no saved
 *     token, the driver sends `$changeStream: {resumeAfter: null}`, and the embedded server
 *     rejects it ("BSON field '$changeStream.resumeAfter' is the wrong type, expected type
 *     'object'"), so the leader drops its planner at once and nothing is ever planned;
 *   - a NON-partial claim index {task: 1, nextRunAt: 1, _id: 1} is created beside mongodash's
 *     own partial `polling_idx` (see below);
 *   - internal options (worker poll 200 ms..10 s, planner batch 1,000 events / 500 ms window)
 *     stay at their defaults: they are not public API (only `mongodash/testing` changes them).
 *   Environment knobs for experiments: BENCH_MONGODASH_CONCURRENCY (default 10),
 *   BENCH_MONGODASH_PARTIAL_ONLY=1 (skip the non-partial index), BENCH_MONGODASH_FAST_POLL=1
 *   (the `configureForTesting` internals: minPollMs 10, minBatchIntervalMs 10),
 *   BENCH_MONGODASH_IGNORE_UNDEFINED=0 (a client without `ignoreUndefined`).
 *
 * Why the non-partial index: mongodash's claim filter {task: {$in}, nextRunAt: {$lte: now,
 * $type: 'date'}, status: {$nin: [...]}} implies its partial filter, so MongoDB serves it from
 * `polling_idx`; the embedded server's query planner never uses a partial index, so without
 * the extra index every claim scans the whole tasks collection (about 2,000 keys and documents
 * examined per task at 2,000 tasks). It cannot have exactly `polling_idx`'s keys: the embedded
 * server refuses an index whose keys equal an existing index's with other options
 * (IndexOptionsConflict, 85), hence the trailing `_id` (the order after the equality on `task`
 * is still `nextRunAt`, the claim's sort).
 *
 * Database commands are counted with the driver's command monitoring (`monitorCommands: true`,
 * one count per `commandStarted` event, by command name; heartbeats of the server monitor are
 * not commands and are not counted, like PyMongo's) and written as JSON to <commands-file> on
 * SIGTERM, after mongodash has stopped. Keys starting with `_` in that file are notes, not
 * commands: `_failed.<command>` counts failed commands (the first 20 are logged on stderr).
 *
 * Embedded-server workaround (only here, only when needed): mongodash's change-stream $match
 * gives a task without a `filter` the clause {$expr: {}}, which MongoDB treats as true (an empty
 * document is truthy). The embedded server up to commit 2632e5a evaluated it as false in query
 * filters and $match, so every insert event was dropped and no task was ever planned. The script probes
 * that ({$expr: {}} against a one-document scratch collection in database `bench_probe`); if
 * the server drops it, the task gets the constant filter {$eq: [1, 1]} (aggregation syntax, true
 * for every document), which mongodash compiles to {$expr: {$eq: [1, 1]}}. The choice is
 * reported on stdout ("probe: ...") and in the commands file as `_emptyExprWorkaround`.
 *
 * Prints "ready" on stdout once the scheduler has started.
 */

const fs = require('fs');
const { performance } = require('perf_hooks');
const { MongoClient } = require('mongodb');
const mongodash = require('mongodash');

const [uri, instanceId, startsFile, commandsFile] = process.argv.slice(2);
if (!commandsFile) {
    console.error('usage: node run.js <uri> <instance-id> <starts-file> <commands-file>');
    process.exit(2);
}
const concurrency = Number(process.env.BENCH_MONGODASH_CONCURRENCY || 10);
const partialOnly = process.env.BENCH_MONGODASH_PARTIAL_ONLY === '1';
const fastPoll = process.env.BENCH_MONGODASH_FAST_POLL === '1';
const ignoreUndefined = process.env.BENCH_MONGODASH_IGNORE_UNDEFINED !== '0';

const counts = {};
const startsFd = fs.openSync(startsFile, 'a');

function wallSeconds() {
    return (performance.timeOrigin + performance.now()) / 1000;
}

async function emptyExprMatches() {
    const probe = new MongoClient(uri);
    try {
        await probe.connect();
        const coll = probe.db('bench_probe').collection('empty_expr');
        await coll.deleteMany({});
        await coll.insertOne({ _id: 1 });
        const found = await coll.find({ $expr: {} }).toArray();
        await probe.db('bench_probe').dropDatabase();
        return found.length === 1;
    } finally {
        await probe.close();
    }
}

async function main() {
    const workaround = !(await emptyExprMatches());
    process.stdout.write(`probe: {$expr: {}} ${workaround ? 'dropped (using filter {$eq: [1, 1]})' : 'matches'}\n`);
    if (workaround) counts._emptyExprWorkaround = 1;
    const client = new MongoClient(uri, { monitorCommands: true, ignoreUndefined });
    client.on('commandStarted', (event) => {
        counts[event.commandName] = (counts[event.commandName] || 0) + 1;
    });
    // Failed commands are logged (the first 20) and counted as "_failed.<name>" notes.
    let failures = 0;
    client.on('commandFailed', (event) => {
        const key = `_failed.${event.commandName}`;
        counts[key] = (counts[key] || 0) + 1;
        if (failures++ < 20) {
            console.error(`[mongodash ${instanceId}] command ${event.commandName} failed:`,
                event.failure && event.failure.message);
        }
    });
    await client.connect();
    if (!partialOnly) {
        await client.db().collection('items_tasks').createIndex(
            { task: 1, nextRunAt: 1, _id: 1 }, { name: 'bench_claim_nonpartial' });
    }
    await mongodash.init({
        mongoClient: client,
        instanceId,
        reactiveTaskConcurrency: concurrency,
        monitoring: { enabled: false },
        onInfo: () => {},
        onError: (err) => console.error(`[mongodash ${instanceId}]`, err),
    });
    await mongodash.reactiveTask({
        task: 'noop',
        collection: 'items',
        watchProjection: { n: 1 },
        debounce: 0,
        ...(workaround ? { filter: { $eq: [1, 1] } } : {}),
        handler: async (ctx) => {
            fs.writeSync(startsFd, `${ctx.docId} ${wallSeconds()}\n`);
        },
    });
    if (fastPoll) {
        mongodash._scheduler.updateInternalOptions({ minPollMs: 10, minBatchIntervalMs: 10 });
    }
    await mongodash.startReactiveTasks();
    process.stdout.write('ready\n');

    let stopping = false;
    const stop = async () => {
        if (stopping) return;
        stopping = true;
        try {
            await mongodash.stopReactiveTasks();
        } catch (err) {
            console.error('stop failed', err);
        }
        fs.writeFileSync(commandsFile, JSON.stringify(counts, null, 2));
        await client.close().catch(() => undefined);
        process.exit(0);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
