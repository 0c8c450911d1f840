// The two flows allot's clients run, written against the client generated
// from the server's own OpenAPI document (openapi-typescript types,
// openapi-fetch calls) and compiled with every strict option. A field the
// document gets wrong (a name, a type, a missing `required`) fails the
// compilation; an answer that differs from what the flow expects fails the
// run.
//
//   ALLOT_URL=http://127.0.0.1:8080 ALLOT_TOKEN=<admin token> node build/flows.js
//
// Every key is unique to the run, so the flows can run against a server
// that already holds data.

import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";

type Schemas = components["schemas"];

const baseUrl = process.env["ALLOT_URL"] ?? "http://127.0.0.1:8080";
const token = process.env["ALLOT_TOKEN"];
const client = createClient<paths>({
    baseUrl,
    headers: token === undefined ? {} : { Authorization: `Bearer ${token}` },
});
const run = `${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;

let checks = 0;

function check(condition: boolean, what: string): asserts condition {
    if (!condition) {
        throw new Error(`check failed: ${what}`);
    }
    checks += 1;
}

/** The answer's body, or an error naming the call, its status and body. */
function ok<T>(call: string, answer: { data?: T; error?: unknown; response: Response }): T {
    if (answer.data === undefined) {
        throw new Error(`${call}: ${answer.response.status} ${JSON.stringify(answer.error)}`);
    }
    return answer.data;
}

/** A code-review pipeline: eligibility flag, experiment, assignment, reweighting, history, results. */
async function reviewPipeline(): Promise<void> {
    const flag = `flow-${run}:eligible`;
    const experiment = `flow-${run}-review`;

    const put = await client.PUT("/v1/flags/{key}", {
        params: { path: { key: flag } },
        body: {
            description: "orgs in review experiments",
            rules: [
                { name: "business plans", condition: { plan: { $in: ["business", "enterprise"] } }, rollout: 100 },
                { name: "everyone else", rollout: 0 },
            ],
        },
    });
    const created = ok("put_flag", put);
    check(put.response.status === 201, "a new flag answers 201");
    check(created.version === 1 && created.enabled, "the flag is stored with its defaults");
    check(put.response.headers.get("etag") === '"1"', "the flag's ETag is its version");

    // A GET body goes back with PUT unchanged (read-only fields ignored).
    const read = ok("get_flag", await client.GET("/v1/flags/{key}", { params: { path: { key: flag } } }));
    const again = await client.PUT("/v1/flags/{key}", {
        params: { path: { key: flag }, header: { "If-Match": `"${read.version}"` } },
        body: read,
    });
    // (An identical document leaves the version as it is.)
    check(again.response.status === 200 && ok("put_flag (read back)", again).version === 1, "a flag read with GET is accepted by PUT");
    // PUT replaces the whole document: change a rule by sending them all.
    const widened = await client.PUT("/v1/flags/{key}", {
        params: { path: { key: flag }, header: { "If-Match": `"${read.version}"` } },
        // (Widening "everyone else" to a partial rollout would make the free
        // org below eligible or not by the bucket of this run's random key.)
        body: {
            ...read,
            rules: read.rules.map((r) =>
                r.name === "business plans" ? { ...r, condition: { plan: { $in: ["business", "enterprise", "team"] } } } : r,
            ),
        },
    });
    check(ok("put_flag (update)", widened).version === 2, "an update under If-Match makes version 2");

    const business = ok(
        "evaluate_flag",
        await client.POST("/v1/flags/{key}/evaluate", {
            params: { path: { key: flag } },
            body: { org_id: 42, attributes: { plan: "business" } },
        }),
    );
    check(business.enabled && business.reason === "rule" && business.rule === "business plans", "a business org is eligible");
    const free = ok(
        "evaluate_flag",
        await client.POST("/v1/flags/{key}/evaluate", {
            params: { path: { key: flag } },
            body: { org_id: "7", attributes: { plan: "free" } },
        }),
    );
    check(!free.enabled, "a free org is not eligible");

    const stored = await client.PUT("/v1/experiments/{key}", {
        params: { path: { key: experiment } },
        body: {
            eligibility_flag: flag,
            treatments: [
                { name: "noop", weight: 1 },
                { name: "cost-optimized", weight: 1, payload: { model: "small" } },
                { name: "perf", weight: 1 },
            ],
        },
    });
    const v1 = ok("put_experiment", stored);
    check(stored.response.status === 201 && v1.version === 1, "the experiment is created at version 1");
    check(v1.layout.reduce((n, r) => n + (r.end - r.start), 0) === 10000, "the layout covers the 10 000 buckets");

    const assign = (org: string, unit: string, plan: string) =>
        client.POST("/v1/experiments/{key}/assign", {
            params: { path: { key: experiment } },
            body: { org_id: org, unit_id: unit, attributes: { plan } },
        });
    const first = ok("assign", await assign("42", "pr-1", "business"));
    const repeat = ok("assign", await assign("42", "pr-1", "business"));
    check(first.reason === "assigned" && first.treatment !== null && first.bucket !== null, "an eligible PR gets a treatment");
    check(first.treatment === repeat.treatment && first.bucket === repeat.bucket, "assignment is deterministic");
    const outside = ok("assign", await assign("7", "pr-2", "free"));
    check(outside.treatment === null && outside.reason === "org_not_eligible", "an ineligible org gets no treatment");

    const batch = ok(
        "assign_batch",
        await client.POST("/v1/assign", {
            body: {
                items: [
                    { experiment, org_id: 42, unit_id: "pr-1", attributes: { plan: "business" } },
                    { experiment: `flow-${run}-missing`, org_id: 42, unit_id: "pr-1" },
                ],
            },
        }),
    );
    const [hit, miss] = batch.results;
    check(hit !== undefined && "treatment" in hit && hit.treatment === first.treatment, "a batch answers like single calls");
    check(miss !== undefined && "error" in miss && miss.error.code === "not_found", "a batch reports a missing experiment in its slot");

    // Reweight: read, change, write back under If-Match; a stale version is refused.
    const current = await client.GET("/v1/experiments/{key}", { params: { path: { key: experiment } } });
    const doc = ok("get_experiment", current);
    const etag = current.response.headers.get("etag") ?? "";
    const reweighted = await client.PUT("/v1/experiments/{key}", {
        params: { path: { key: experiment }, header: { "If-Match": etag } },
        body: { ...doc, treatments: doc.treatments.map((t) => ({ ...t, weight: t.name === "perf" ? 2 : 1 })) },
    });
    check(ok("put_experiment (reweight)", reweighted).version === 2, "reweighting makes version 2");
    const stale = await client.PUT("/v1/experiments/{key}", {
        params: { path: { key: experiment }, header: { "If-Match": etag } },
        body: doc,
    });
    check(stale.response.status === 412 && stale.error?.error.code === "version_mismatch", "a stale If-Match is 412");

    const versions = ok("list_versions", await client.GET("/v1/experiments/{key}/versions", { params: { path: { key: experiment } } }));
    const [second, initial] = versions;
    check(versions.length === 2 && second !== undefined && initial?.version === 1, "both versions are listed, newest first");
    check(second.phase === 2 && second.moved.buckets > 0 && second.moved.ranges.length > 0, "reweighting starts a phase and says what moved");
    check(second.config !== null && second.config.treatments.length === 3, "a version carries its document");

    const results = ok("get_results", await client.GET("/v1/experiments/{key}/results", { params: { path: { key: experiment } } }));
    check(results.phases.length >= 1, "results list the phases");

    const history = ok("flag_history", await client.GET("/v1/flags/{key}/history", { params: { path: { key: flag } } }));
    check(history.events.length === 2 && history.events.every((e) => e.action === "created" || e.action === "updated"), "the flag's history has both writes");
}

/** A study: 2 high scorers and 2 low scorers form one discussion cohort with its own variables. */
async function study(): Promise<void> {
    const experiment = `flow-${run}-study`;
    const stored = await client.PUT("/v1/experiments/{key}", {
        params: { path: { key: experiment } },
        body: {
            treatments: [{ name: "control", weight: 1 }],
            cohorts: [{ alias: "discussion", name: "Discussion", capacity: 8 }],
            variables: [{ name: "persona", default: "control", cohort_values: { discussion: "mixed" } }],
            routing: {
                groups: [
                    {
                        name: "Mixed",
                        target_cohort: "discussion",
                        composition: [
                            { id: "high", condition: { score: { $gte: 7 } }, min_count: 2, max_count: 2 },
                            { id: "low", condition: { score: { $lt: 5 } }, min_count: 2, max_count: 2 },
                        ],
                    },
                ],
            },
        },
    });
    ok("put_experiment (study)", stored);

    const scores: [string, number][] = [["p-1", 9], ["p-2", 2], ["p-3", 8], ["p-4", 1]];
    let last: Schemas["ParticipantView"] | undefined;
    for (const [participant, score] of scores) {
        const path = { key: experiment, participant_id: participant };
        const registered = await client.PUT("/v1/experiments/{key}/participants/{participant_id}", {
            params: { path },
            body: { attributes: { score } },
        });
        check(registered.response.status === 201 && ok("register_participant", registered).status === "new", `${participant} is registered`);
        last = ok("route_participant", await client.POST("/v1/experiments/{key}/participants/{participant_id}/route", { params: { path } }));
    }
    check(last !== undefined && last.status === "assigned" && last.group === "Mixed" && last.entry === "low", "the fourth arrival forms the group");
    check(last.cohort?.alias === "discussion" && last.variables["persona"] === "mixed", "the cohort's variables resolve");

    const cohorts = ok("list_cohorts", await client.GET("/v1/experiments/{key}/cohorts", { params: { path: { key: experiment } } }));
    const [cohort] = cohorts;
    check(cohorts.length === 1 && cohort !== undefined && cohort.members.assigned === 4, "the cohort holds the four");
    const members = ok(
        "list_cohort_participants",
        await client.GET("/v1/experiments/{key}/cohorts/{cohort_id}/participants", {
            params: { path: { key: experiment, cohort_id: cohort.id } },
        }),
    );
    check(members.map((m) => m.participant_id).sort().join() === "p-1,p-2,p-3,p-4", "the members are listed");

    const events = ok("list_routing_events", await client.GET("/v1/experiments/{key}/routing/events", { params: { path: { key: experiment } } }));
    check(events.events.filter((e) => e.reason === "formed").length === 4, "the audit log records each formation");
}

await reviewPipeline();
await study();
console.log(`typescript client: both flows passed (${checks} checks) against ${baseUrl}`);
