"""Query, update, projection and aggregation semantics: the facade of the engine modules.

The server owns storage, indexes, the change log and transactions; what a filter matches, what an
update operator does to one document and what a pipeline stage computes comes from mongomock-ng,
used as a library of primitives (never as storage), with its gaps covered by the engine's own
implementations registered in its operator tables. The work is split by concept:

* :mod:`~runtime.embedded.comparison` - BSON equality, order, type names and truthiness;
* :mod:`~runtime.embedded.query_operators` - query operators and the matcher (:func:`matches`);
* :mod:`~runtime.embedded.expressions` - the expression evaluator, with the operators of
  :mod:`~runtime.embedded.arithmetic`, :mod:`~runtime.embedded.date_expressions`,
  :mod:`~runtime.embedded.array_expressions`, :mod:`~runtime.embedded.object_expressions`
  and :mod:`~runtime.embedded.string_expressions`;
* :mod:`~runtime.embedded.stages` - aggregation stages and :func:`run_pipeline`, with the
  ``$group`` accumulators of :mod:`~runtime.embedded.accumulators`;
* :mod:`~runtime.embedded.updates` and :mod:`~runtime.embedded.update_operators` - updates;
* :mod:`~runtime.embedded.projection` - find projections;
* :mod:`~runtime.embedded.engine_support` - the library handles and error translation.

Other modules import from here only. The ``SUPPORTED_*`` sets (computed from what is registered)
feed the compatibility matrix.
"""

from __future__ import annotations

from runtime.embedded.accumulators import SUPPORTED_ACCUMULATORS
from runtime.embedded.comparison import (
    bson_compare,
    bson_equal,
    bson_type_name,
    ordering_key,
    to_bool,
)
from runtime.embedded.engine_support import (
    evaluation_error,
    mm_aggregate,
    mm_collection,
    mm_filtering,
    mm_helpers,
    mongomock_ng,
)
from runtime.embedded.expressions import (
    EXPRESSION_ORDERINGS,
    SUPPORTED_EXPRESSIONS,
    _parse_expression,
    expression_handler,
    let_variables,
    system_variables,
)
from runtime.embedded.projection import project
from runtime.embedded.query_operators import (
    SUPPORTED_QUERY_OPERATORS,
    bind_compiled,
    equality_operator,
    in_operator,
    matches,
    query_comparison,
    type_operator,
    validate_filter,
)
from runtime.embedded.stages import SUPPORTED_STAGES, ForeignCollections, known_stage, run_pipeline
from runtime.embedded.update_operators import upsert_seed
from runtime.embedded.updates import (
    UPDATE_OPERATORS,
    UPDATE_PIPELINE_STAGES,
    apply_update,
    is_operator_update,
    validate_replacement,
    validate_update_document,
)

#: Every update operator an operator update may use.
SUPPORTED_UPDATE_OPERATORS: frozenset[str] = UPDATE_OPERATORS

__all__ = [
    "EXPRESSION_ORDERINGS",
    "SUPPORTED_ACCUMULATORS",
    "SUPPORTED_EXPRESSIONS",
    "SUPPORTED_QUERY_OPERATORS",
    "SUPPORTED_STAGES",
    "SUPPORTED_UPDATE_OPERATORS",
    "UPDATE_OPERATORS",
    "UPDATE_PIPELINE_STAGES",
    "ForeignCollections",
    "_parse_expression",
    "apply_update",
    "bson_compare",
    "bson_equal",
    "bson_type_name",
    "equality_operator",
    "evaluation_error",
    "expression_handler",
    "in_operator",
    "is_operator_update",
    "known_stage",
    "let_variables",
    "matches",
    "mm_aggregate",
    "mm_collection",
    "mm_filtering",
    "mm_helpers",
    "mongomock_ng",
    "ordering_key",
    "project",
    "query_comparison",
    "run_pipeline",
    "system_variables",
    "to_bool",
    "type_operator",
    "upsert_seed",
    "validate_filter",
    "validate_replacement",
    "validate_update_document",
]

# The compiled fast path for update pipelines and filters (it builds on this module).
from runtime.embedded import compiled as _compiled  # noqa: E402
from runtime.embedded import compiled_filter as _compiled_filter  # noqa: E402

bind_compiled(_compiled, _compiled_filter)
