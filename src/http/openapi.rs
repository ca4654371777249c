//! Completes the generated OpenAPI document with what every operation may
//! answer besides its own responses, so that a client generated from it (or
//! a conformance checker such as schemathesis) meets no undocumented status
//! or media type:
//!
//! * problem details are `application/problem+json` (RFC 9457), not the
//!   `application/json` the generator writes;
//! * every operation documents the errors the middleware can give (400, 401,
//!   403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 503): RFC 6749 bodies
//!   on the OAuth endpoints, HTML pages or problem details on the pages,
//!   problem details elsewhere;
//! * a schema that is `allOf` another one with `additionalProperties: false`
//!   (a flattened request type inside a response type) gets that schema
//!   inlined without the restriction, or no response could ever match.

use serde_json::{json, Map, Value};

const PROBLEM: &str = "#/components/schemas/Problem";
const OAUTH_ERROR: &str = "#/components/schemas/OAuthErrorBody";
const ERRORS: [&str; 13] = [
    "400", "401", "403", "404", "405", "408", "409", "413", "415", "422", "429", "500", "503",
];
const OAUTH_PATHS: [&str; 5] = ["/token", "/par", "/bc-authorize", "/introspect", "/revoke"];

fn schema_ref(r: &str) -> Value {
    json!({"schema": {"$ref": r}})
}

fn is_page(op: &Value) -> bool {
    op["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(_, r)| r["content"].get("text/html").is_some())
}

fn complete_operation(path: &str, op: &mut Value) {
    let oauth = OAUTH_PATHS.contains(&path);
    let page = is_page(op);
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for r in responses.values_mut() {
        let Some(content) = r.get_mut("content").and_then(Value::as_object_mut) else {
            continue;
        };
        if content
            .get("application/json")
            .is_some_and(|c| c["schema"]["$ref"] == PROBLEM)
        {
            if let Some(c) = content.remove("application/json") {
                content.insert("application/problem+json".into(), c);
            }
        }
        if page {
            // Pages answer errors with a page, or with problem details when
            // the request never reached the page (a malformed query).
            content
                .entry("application/problem+json")
                .or_insert_with(|| schema_ref(PROBLEM));
            content
                .entry("text/html")
                .or_insert_with(|| json!({"schema": {"type": "string"}}));
        }
    }
    for status in ERRORS {
        let mut content = Map::new();
        let oauth_body = oauth && matches!(status, "400" | "401" | "403" | "429" | "500" | "503");
        if oauth_body {
            content.insert("application/json".into(), schema_ref(OAUTH_ERROR));
        } else {
            content.insert("application/problem+json".into(), schema_ref(PROBLEM));
            if page {
                content.insert("text/html".into(), json!({"schema": {"type": "string"}}));
            }
        }
        let entry = responses
            .entry(status)
            .or_insert_with(|| json!({"description": "An error (see the body)", "content": {}}));
        if let Some(existing) = entry.get_mut("content").and_then(Value::as_object_mut) {
            for (k, v) in content {
                existing.entry(k).or_insert(v);
            }
        } else if let Some(e) = entry.as_object_mut() {
            e.insert("content".into(), Value::Object(content));
        }
    }
}

/// Inlines `additionalProperties: false` schemas that appear inside `allOf`.
fn relax_flattened(components: &mut Map<String, Value>) {
    let closed: Map<String, Value> = components
        .iter()
        .filter(|(_, s)| s["additionalProperties"] == false)
        .map(|(k, s)| {
            let mut open = s.clone();
            if let Some(o) = open.as_object_mut() {
                o.remove("additionalProperties");
            }
            (format!("#/components/schemas/{k}"), open)
        })
        .collect();
    for s in components.values_mut() {
        let Some(parts) = s.get_mut("allOf").and_then(Value::as_array_mut) else {
            continue;
        };
        for part in parts.iter_mut() {
            if let Some(open) = part["$ref"].as_str().and_then(|r| closed.get(r)) {
                *part = open.clone();
            }
        }
    }
}

/// The completed document.
pub fn complete(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let Ok(mut v) = serde_json::to_value(&doc) else {
        return doc;
    };
    if let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            if let Some(item) = item.as_object_mut() {
                for (method, op) in item.iter_mut() {
                    if matches!(method.as_str(), "get" | "post" | "put" | "delete" | "patch") {
                        complete_operation(path, op);
                    }
                }
            }
        }
    }
    if let Some(c) = v
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(Value::as_object_mut)
    {
        relax_flattened(c);
    }
    serde_json::from_value(v).unwrap_or(doc)
}
