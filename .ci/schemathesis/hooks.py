"""Schemathesis hooks for the API fuzzing step of .ci/run.

JSON Schema cannot state every rule of the contract: some relate one field
to another (a forced pin names a listed treatment, `target_cohort` names a
defined alias, only a group without one may backfill, an eligibility flag
must exist), some are about bytes rather
than characters (ids are 1 to 256 *bytes*), and some need the server's regex
engine. The document states them in its descriptions, and the server answers
422 naming the field. A schema-valid request rejected for exactly those
reasons is not a mismatch between the document and the server, so this hook
lets that one failure go when *every* problem in the answer is one of them.
Anything else still fails the run.

It also knows one answer shape JSON Schema checks cannot see: `POST
/v1/assign` answers 200 with an error in the slot of an invalid item
(contract §4.3: an item's error does not fail the others), so an invalid
item is rejected there, in its slot.
"""

import json
import os
import re
import sys

import schemathesis

def _problems(response):
    """The error object of an answer, or None."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _at(body, pointer):
    """The value at a JSON Pointer in the request body, or None."""
    value = body
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def _over_in_bytes(limit):
    """A string within `limit` characters (what `maxLength` counts) but over
    `limit` bytes of UTF-8 (what the contract counts)."""
    return lambda value: (
        isinstance(value, str) and len(value) <= limit < len(value.encode("utf-8", "surrogatepass"))
    )


def _anything(value):
    return True


# Each: a rule stated in the document's descriptions that JSON Schema cannot
# express, as the server words it in `details[].message`, and what the value
# at `details[].path` must be for the rule to be the reason.
RULES_BEYOND_THE_SCHEMA = [
    (r"must name a listed treatment", _anything),
    (r"pins the same org and unit as /forced/\d+", _anything),
    (r"duplicate (treatment name|cohort alias|variable|group name|composition id) .*", _anything),
    (r"names no defined cohort \(no alias .*\)", _anything),
    (r"only a group without a target_cohort can backfill \(its cohorts are the ones it forms\)", _anything),
    (r"must be >= min_count", _anything),
    (r"the min_counts add up to \d+, more than the target cohort's capacity \d+", _anything),
    (r"no flag .*", _anything),
    (r"invalid regular expression: .*", _anything),
    (r"the (condition's )?regular expressions? compiles? to more than \d+ bytes.*", _anything),
    (r"could take \d+ steps to evaluate .*", _anything),
    (r"must be a string of 1 to 200 bytes", _over_in_bytes(200)),
    (r"must be a string of 1 to 256 bytes or a non-negative integer", _over_in_bytes(256)),
    (r"must be a non-empty string|must be a string", _over_in_bytes(10000)),
]


def _only_rules_beyond_the_schema(case, response):
    error = _problems(response)
    if error is None or error.get("code") != "validation_failed":
        return False
    details = error.get("details") or []

    def explained(detail):
        message, path = detail.get("message", ""), detail.get("path", "")
        if re.fullmatch(r"the [a-z ]+ in the URL must be 1 to 256 bytes long", message):
            return any(_over_in_bytes(256)(v) for v in (case.path_parameters or {}).values())
        return any(
            re.fullmatch(rule, message) and holds(_at(case.body, path))
            for rule, holds in RULES_BEYOND_THE_SCHEMA
        )

    return bool(details) and all(explained(d) for d in details)


def _invalid_item_rejected_in_its_slot(case, response):
    if case.operation.path != "/v1/assign" or response.status_code != 200:
        return False
    try:
        results = json.loads(response.content)["results"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(
        isinstance(r, dict)
        and isinstance(r.get("error"), dict)
        and r["error"].get("code") == "validation_failed"
        for r in results
    )


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    explained = (
        failure.code == "ST202"
        and response.status_code == 422
        and _only_rules_beyond_the_schema(case, response)
    ) or (failure.code == "ST201" and _invalid_item_rejected_in_its_slot(case, response))
    if explained and os.environ.get("ALLOT_FUZZ_SHOW_EXPLAINED"):
        print(f"explained {failure.code} {case.operation.label}: {response.text[:300]}", file=sys.stderr)
    return not explained
