"""The command table: every command the server answers, with its handler and properties.

One explicit table, so what the server implements is read here, not collected from decorators
spread over modules. ``in_transaction``: allowed inside a multi-document transaction;
``retryable_write``: a write drivers may retry with the same ``txnNumber``; ``admin_only``: only
on the ``admin`` database; ``test_only``: only with ``--enable-test-commands``. The
compatibility matrix (``runtime/embedded/compatibility.py``) is computed from this table.
"""

from __future__ import annotations

from runtime.embedded import collectionless
from runtime.embedded.commands import (
    administration,
    aggregation,
    catalog,
    crud,
    diagnostics,
    explain,
    handshake,
    reads,
    testing,
    transactions,
    users,
    validate,
)
from runtime.embedded.commands.registry import CommandInfo

COMMANDS: dict[str, CommandInfo] = {
    # collectionless
    "currentOp": CommandInfo(collectionless.current_op_command, admin_only=True),
    # administration
    "fsync": CommandInfo(administration.fsync, admin_only=True),
    "fsyncUnlock": CommandInfo(administration.fsync_unlock, admin_only=True),
    "logRotate": CommandInfo(administration.log_rotate, admin_only=True),
    "dropConnections": CommandInfo(administration.drop_connections, admin_only=True),
    "planCacheClear": CommandInfo(administration.plan_cache_clear),
    "planCacheClearFilters": CommandInfo(administration.plan_cache_clear),
    "planCacheListFilters": CommandInfo(administration.plan_cache_list_filters),
    "setFeatureCompatibilityVersion": CommandInfo(administration.set_feature_compatibility_version,
                                                  admin_only=True),
    "getClusterParameter": CommandInfo(administration.get_cluster_parameter, admin_only=True),
    "replSetGetConfig": CommandInfo(administration.repl_set_get_config, admin_only=True),
    # aggregation
    "aggregate": CommandInfo(aggregation.aggregate, in_transaction=True),
    # catalog
    "create": CommandInfo(catalog.create, in_transaction=True),
    "collMod": CommandInfo(catalog.coll_mod),
    "drop": CommandInfo(catalog.drop),
    "dropDatabase": CommandInfo(catalog.drop_database),
    "renameCollection": CommandInfo(catalog.rename_collection, admin_only=True),
    "listCollections": CommandInfo(catalog.list_collections, in_transaction=True),
    "listDatabases": CommandInfo(catalog.list_databases, admin_only=True),
    "createIndexes": CommandInfo(catalog.create_indexes, in_transaction=True),
    "listIndexes": CommandInfo(catalog.list_indexes, in_transaction=True),
    "dropIndexes": CommandInfo(catalog.drop_indexes),
    "deleteIndexes": CommandInfo(catalog.drop_indexes),
    "dbStats": CommandInfo(catalog.db_stats),
    "collStats": CommandInfo(catalog.coll_stats),
    # crud
    "insert": CommandInfo(crud.insert, in_transaction=True, retryable_write=True),
    "update": CommandInfo(crud.update, in_transaction=True, retryable_write=True),
    "delete": CommandInfo(crud.delete, in_transaction=True, retryable_write=True),
    "find": CommandInfo(reads.find, in_transaction=True),
    "getMore": CommandInfo(reads.get_more, in_transaction=True),
    "killCursors": CommandInfo(reads.kill_cursors, in_transaction=True),
    "findAndModify": CommandInfo(crud.find_and_modify, in_transaction=True, retryable_write=True),
    "findandmodify": CommandInfo(crud.find_and_modify, in_transaction=True, retryable_write=True),
    "count": CommandInfo(reads.count),
    "distinct": CommandInfo(reads.distinct, in_transaction=True),
    # diagnostics
    "replSetGetStatus": CommandInfo(diagnostics.repl_set_get_status, admin_only=True),
    "getDefaultRWConcern": CommandInfo(diagnostics.get_default_rw_concern, admin_only=True),
    "dataSize": CommandInfo(diagnostics.data_size),
    "dbHash": CommandInfo(diagnostics.db_hash),
    "top": CommandInfo(diagnostics.top, admin_only=True),
    "profile": CommandInfo(diagnostics.profile),
    "killOp": CommandInfo(diagnostics.kill_op, admin_only=True),
    "lockInfo": CommandInfo(diagnostics.lock_info, admin_only=True),
    "connPoolStats": CommandInfo(diagnostics.conn_pool_stats),
    # explain
    "explain": CommandInfo(explain.explain),
    # handshake
    "hello": CommandInfo(handshake.hello, in_transaction=True),
    "isMaster": CommandInfo(handshake.hello, in_transaction=True),
    "ismaster": CommandInfo(handshake.hello, in_transaction=True),
    "ping": CommandInfo(handshake.ping, in_transaction=True),
    "buildInfo": CommandInfo(handshake.build_info),
    "buildinfo": CommandInfo(handshake.build_info),
    "getParameter": CommandInfo(handshake.get_parameter),
    "setParameter": CommandInfo(handshake.set_parameter, admin_only=True),
    "getCmdLineOpts": CommandInfo(handshake.get_cmd_line_opts),
    "serverStatus": CommandInfo(handshake.server_status),
    "hostInfo": CommandInfo(handshake.host_info),
    "whatsmyuri": CommandInfo(handshake.whats_my_uri),
    "listCommands": CommandInfo(handshake.list_commands),
    "endSessions": CommandInfo(handshake.end_sessions),
    "killSessions": CommandInfo(handshake.end_sessions),
    "killAllSessions": CommandInfo(handshake.end_sessions),
    "killAllSessionsByPattern": CommandInfo(handshake.end_sessions),
    "refreshSessions": CommandInfo(handshake.end_sessions),
    "startSession": CommandInfo(handshake.start_session),
    "getLog": CommandInfo(handshake.get_log),
    # testing
    "configureFailPoint": CommandInfo(testing.configure_fail_point,
                                      admin_only=True, test_only=True),
    # transactions
    "commitTransaction": CommandInfo(transactions.commit_transaction,
                                     in_transaction=True, admin_only=True),
    "abortTransaction": CommandInfo(transactions.abort_transaction,
                                    in_transaction=True, admin_only=True),
    # users
    "saslStart": CommandInfo(users.sasl_start),
    "saslContinue": CommandInfo(users.sasl_continue),
    "logout": CommandInfo(users.logout),
    "connectionStatus": CommandInfo(users.connection_status),
    "createUser": CommandInfo(users.create_user),
    "updateUser": CommandInfo(users.update_user),
    "dropUser": CommandInfo(users.drop_user),
    "dropAllUsersFromDatabase": CommandInfo(users.drop_all_users),
    "grantRolesToUser": CommandInfo(users.grant_roles),
    "revokeRolesFromUser": CommandInfo(users.revoke_roles),
    "usersInfo": CommandInfo(users.users_info),
    # validate
    "validate": CommandInfo(validate.validate),
}
