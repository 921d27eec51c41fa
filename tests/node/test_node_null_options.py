"""Options left ``undefined`` in Node.js reach the server as BSON null and must work (issue 12).

The Node.js driver (6.x) copies the change-stream options it is given into the ``$changeStream``
stage, ``undefined`` ones included, and its BSON serializer writes ``undefined`` as null (its
``ignoreUndefined`` option is false by default). mongod 7.0 parses commands and the stage with
IDL, whose parser treats an optional field holding null as absent
(``IDLParserContext::checkAndAssertType``: "If the type is wrong, ignore Null and Undefined
values"). ``null_options.js`` opens ``watch([], {resumeAfter: undefined, ...})`` and must see
the event of a later insert, and runs find/update/count with ``undefined`` options.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from test_node_driver import HERE, RUN_TIMEOUT_S, node  # noqa: F401  (fixture: npm ci if needed)


def test_undefined_change_stream_options_see_events(node: str,  # noqa: F811
                                                    mongodb_uri: str) -> None:
    """``watch([], {resumeAfter: undefined, ...})`` starts now and sees a later insert, as on
    mongod, where each null option of ``$changeStream`` is absent (manual: db.collection.watch)."""
    result = subprocess.run(
        [node, str(HERE / "null_options.js"), mongodb_uri],
        cwd=HERE, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, f"null_options.js failed:\n{result.stderr}\n{result.stdout}"
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])

    # The driver really sends these options, as null.
    assert report["undefinedBecomes"] == {"ignoreUndefined": False, "hasKey": True,
                                          "value": None}
    assert report["sentStages"] and "resumeAfter" in report["sentStages"][0]
    assert "startAfter" in report["sentStages"][0]

    assert report["event"] == {"operationType": "insert", "id": 1}
    assert report["found"] == [{"_id": 0, "n": 0}, {"_id": 1, "n": 1}]
    assert report["modified"] == 1
    assert report["counted"] == 2
